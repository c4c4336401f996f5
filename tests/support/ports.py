"""Free loopback TCP ports for servers the tests start."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from tests.support.service import wait_until

#: How many ports a server is started on before its failure counts.
PORT_ATTEMPTS = 3
S = TypeVar("S")


class HasPort(Protocol):
    port: int


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it (bind to port 0), so parallel test runs do not collide on a
    fixed number. There is a small window before the caller binds it; every server
    here binds within milliseconds, which is good enough on a test machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def connect_within(
    host: str, port: int, timeout: float, *, socket_timeout: float
) -> socket.socket | None:
    """A TCP connection to ``host:port``, retried until one is accepted; None if none is
    within ``timeout``. ``socket_timeout`` is each attempt's, and the socket's after."""

    def attempt() -> socket.socket | None:
        try:
            return socket.create_connection((host, port), timeout=socket_timeout)
        except OSError:
            return None

    try:
        return wait_until(attempt, timeout, f"nothing accepts on {host}:{port}", interval=0.02)
    except TimeoutError:
        return None


def wait_for_tcp(host: str, port: int, timeout: float) -> bool:
    """Poll until something accepts TCP connections on ``host:port``; False on timeout."""
    sock = connect_within(host, port, timeout, socket_timeout=0.5)
    if sock is None:
        return False
    sock.close()
    return True


def start_on_a_free_port(server: HasPort, start: Callable[[], S], error: type[Exception]) -> S:
    """``start()``; when the port was taken between choosing and binding it (other test
    runs share the machine), choose another and start again."""
    for _attempt in range(PORT_ATTEMPTS - 1):
        try:
            return start()
        except error as failure:
            if "Address already in use" not in str(failure):
                raise
            server.port = free_port()
    return start()
