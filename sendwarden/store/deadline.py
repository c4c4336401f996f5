"""Client-side deadlines for blocking database calls.

A server-side ``statement_timeout`` is enforced by the server: a hung or stopped
PostgreSQL enforces nothing, and the milter thread waits as long as the MTA lets it.
:class:`Watchdog` runs one thread for the whole process; a call registers what to do
when its deadline passes (shut the connection's socket, interrupt SQLite), and the
blocked driver call then fails at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


class Deadline:
    """One registered call: ``expired`` tells the caller why its driver call failed."""

    __slots__ = ("done", "expired")

    def __init__(self) -> None:
        self.expired = False
        self.done = False


class Watchdog:
    """Fires ``on_expiry`` for calls still running at their deadline (one thread)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, Deadline, Callable[[], None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def limit(self, seconds: float, on_expiry: Callable[[], None]) -> Iterator[Deadline]:
        deadline = Deadline()
        with self._lock:
            heapq.heappush(
                self._heap, (time.monotonic() + seconds, next(self._order), deadline, on_expiry)
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sendwarden-deadlines", daemon=True
                )
                self._thread.start()
            self._lock.notify()
        try:
            yield deadline
        finally:
            with self._lock:
                deadline.done = True  # popped lazily

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait()
                    continue
                due, _, deadline, on_expiry = self._heap[0]
                pause = due - time.monotonic()
                if pause > 0:
                    self._lock.wait(pause)
                    continue
                heapq.heappop(self._heap)
                # Under the lock: the call cannot finish (and hand its connection to
                # another thread) while it is being ended.
                deadline.expired = True
                try:
                    on_expiry()
                except Exception:  # the call fails anyway; never kill the watchdog
                    log.exception("ending a call past its deadline failed")


WATCHDOG = Watchdog()
