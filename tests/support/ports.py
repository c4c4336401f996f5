"""Free loopback TCP ports for servers the tests start."""

from __future__ import annotations

import socket

from tests.support.service import wait_until


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
