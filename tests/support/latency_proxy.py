"""A TCP proxy on 127.0.0.1 that delays what clients send, to inject latency faults.

Between sendwarden and a real server (Redis, PostgreSQL): every chunk a client sends
is held for ``delay`` seconds (the value when it arrived) and then forwarded, in
order, even if the client has given up and closed its socket by then: exactly what
a slow network or a stalled server does to a request that timed out at the client
but still runs later. Replies go back at once.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from types import TracebackType
from typing import Self

from tests.support.service import wait_until

_CLOSE = b""  # queued after a client's last chunk: shut the upstream's write side


class LatencyProxy:
    """Listens on ``port`` and forwards every connection to ``target``."""

    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.host = "127.0.0.1"
        self._listener = socket.create_server((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._in_flight = 0  # chunks received and not yet forwarded
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    # -- control ------------------------------------------------------------------

    def idle(self) -> bool:
        """True when every chunk received has been forwarded."""
        with self._lock:
            return self._in_flight == 0

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every delayed chunk has reached the server."""
        wait_until(self.idle, timeout, "the latency proxy did not drain", interval=0.01)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- forwarding -----------------------------------------------------------------

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
            self._start(self._receive, client, chunks)
            self._start(self._forward, chunks, upstream)
            self._start(self._reply, upstream, client)

    def _receive(self, client: socket.socket, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        """Client -> queue, each chunk stamped with the time it is due upstream."""
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = _CLOSE
            with self._lock:
                self._in_flight += 1
            chunks.put((time.monotonic() + self.delay, data))
            if data == _CLOSE:
                return

    def _forward(self, chunks: queue.Queue[tuple[float, bytes]], upstream: socket.socket) -> None:
        """Queue -> server, each chunk once its delay has passed, in order."""
        while True:
            due, data = chunks.get()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                if data == _CLOSE:
                    upstream.shutdown(socket.SHUT_WR)
                else:
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._in_flight -= 1
            if data == _CLOSE:
                return

    @staticmethod
    def _reply(upstream: socket.socket, client: socket.socket) -> None:
        """Server -> client at once; a client that has gone only loses the reply."""
        while True:
            try:
                data = upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with contextlib.suppress(OSError):
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()
