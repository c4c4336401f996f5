"""A throw-away ``redis-server`` on 127.0.0.1, for integration and end-to-end tests.

Never the system's Redis: each instance has its own port, its own temp directory and no
persistence, so tests can flush it, stop it (to see how sendwarden behaves when its store
is down) and start it again on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.ports import free_port


class RedisServerError(RuntimeError):
    """redis-server did not start; the message carries its log."""


class RedisServer:
    """One private redis-server process.

    ``start()`` and ``stop()`` may be called repeatedly; the port stays the same, so a
    client configured with ``url`` reconnects after a restart.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.binary = binary
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="sw-redis-"))
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0, as sendwarden's ``[redis] url`` expects."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start redis-server and return once it answers PING."""
        if self.running:
            return self
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--databases", "16",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.start_timeout
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(
                    f"redis-server on port {self.port} did not start:\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (no save) and wait for it; killing it if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

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

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} running={self.running}>"
