"""A throw-away ``redis-server`` on 127.0.0.1, for integration and end-to-end tests.

Never the system's Redis: each instance has its own port, its own temp directory and no
persistence, so tests can flush it, stop it (to see how sendwarden behaves when its store
is down) and start it again on the same port.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.support.ports import free_port
from tests.support.service import ProcessService


class RedisServerError(RuntimeError):
    """redis-server did not start; the message carries its log."""


class RedisServer(ProcessService):
    """One private redis-server process.

    ``start()`` and ``stop()`` may be called repeatedly; the port stays the same, so a
    client configured with ``url`` reconnects after a restart.
    """

    root: Path
    log_name = "redis log"

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str = "redis-server",
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.binary = binary
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self.root = Path(tempfile.mkdtemp(prefix="sw-redis-"))
        self.log_path = self.root / "redis.log"

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0, as sendwarden's ``[redis] url`` expects."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        """Start redis-server and return once it answers PING."""
        if self.running:
            return self
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--databases", "16",
            *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self._wait_ready(
            self.ping,
            lambda: RedisServerError(
                f"redis-server on port {self.port} did not start:\n{self.log()}"
            ),
            interval=0.02,
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (no save) and wait for it; killing it if it hangs."""
        self._terminate(signal.SIGTERM, timeout)

    def ping(self) -> bool:
        """True if the server answers PING (raw RESP, so no client library is needed)."""
        return self.command("PING") == b"+PONG\r\n"

    def flushall(self) -> None:
        """Empty every database; used between tests that share one server."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK\r\n":
            raise RedisServerError(f"FLUSHALL failed: {reply!r}")

    def command(self, *args: str) -> bytes | None:
        """Send one command; return the first reply chunk, or None if nobody answers."""
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            raw = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(payload)
                return sock.recv(65536)
        except OSError:
            return None

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} running={self.running}>"
