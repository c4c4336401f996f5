"""Storage behind small interfaces. Every backend raises :class:`StoreError`, so
the pipeline maps any storage failure to the one ``on_store_error`` setting."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Generic, TypeVar

#: The backends that answered during the current pipeline stage (see watching()).
_answered: ContextVar[set[str] | None] = ContextVar("sendwarden_store_answered", default=None)


def answered(backend: str) -> None:
    """A call to ``backend`` got its answer: tells StoreHealth the backend is up.
    Cheap (the counter's hot path calls it); a no-op outside :func:`watching`."""
    seen = _answered.get()
    if seen is not None:
        seen.add(backend)


@contextlib.contextmanager
def watching() -> Iterator[set[str]]:
    """Collect the backends that answered while the block runs (one thread)."""
    seen: set[str] = set()
    token = _answered.set(seen)
    try:
        yield seen
    finally:
        _answered.reset(token)


class StoreError(Exception):
    """A backend (Redis, the consent database) could not answer in time."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend}: {detail}")
        self.backend = backend
        self.detail = detail


class StoreHealth:
    """Logs a storage outage once when it starts and once when it ends, not once per
    message: ``failed`` on every error, ``succeeded`` with the backends that answered.
    Health is per backend: mail that never touched the consent database says nothing
    about it, so a PostgreSQL outage is one unavailable/available pair however much
    Redis-only mail passes meanwhile."""

    def __init__(self, log: logging.Logger, while_down: str) -> None:
        self._log = log
        self._while_down = while_down  # what the outage means, e.g. "mail is tempfailed"
        self._lock = threading.Lock()
        self._down: set[str] = set()

    def failed(self, error: StoreError) -> None:
        with self._lock:
            if error.backend in self._down:
                return
            self._down.add(error.backend)
        self._log.error("%s is unavailable (%s); %s", error.backend, error.detail, self._while_down)

    def succeeded(self, backends: set[str] | frozenset[str]) -> None:
        """``backends`` answered: those that were down are up again."""
        if not self._down or not backends:  # the common case, without the lock
            return
        with self._lock:
            recovered = self._down & backends
            self._down -= recovered
        for backend in sorted(recovered):
            self._log.warning("%s is available again", backend)


T = TypeVar("T")


def open_once(lock: threading.Lock, timeout_ms: int, opener: Callable[[], T]) -> T:
    """``opener()`` under ``lock``, waiting for the lock at most ``timeout_ms``: a
    database slow to open (a writer holds its lock, the server hangs) costs each
    message one timeout, not the sum of the timeouts of those queued before it."""
    if not lock.acquire(timeout=timeout_ms / 1000):
        raise StoreError(
            "consent database", f"still being opened by another connection after {timeout_ms} ms"
        )
    try:
        return opener()
    finally:
        lock.release()


class _Holders(Generic[T]):
    """A resource and how many configurations hold it."""

    def __init__(self, key: Hashable, resource: T, close: Callable[[T], None]) -> None:
        self.key = key
        self.resource = resource
        self._close = close
        self._count = 1
        self._lock = threading.Lock()

    def join(self, key: Hashable) -> bool:
        """One more holder, if it would open the same (``key``) and this is still open."""
        with self._lock:
            if self._count == 0 or key != self.key:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1
            last = self._count == 0
        if last:
            self._close(self.resource)


class Shared(Generic[T]):
    """One configuration's hold on a store's connections (a Redis client, the
    database pool), which a reload hands on to the next configuration when that
    would open the same: equal ``key`` (URL, timeout). So the first messages after a
    reload reuse open connections and wait for no new one (under load that wait can
    outlast the store's timeout and tempfail them). The resource is closed when the
    last configuration holding it closes."""

    def __init__(
        self,
        key: Hashable,
        make: Callable[[], T],
        close: Callable[[T], None],
        previous: Shared[T] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._holders: _Holders[T]
        if previous is not None and previous._holders.join(key):
            self._holders = previous._holders
        else:
            self._holders = _Holders(key, make(), close)

    @property
    def resource(self) -> T:
        return self._holders.resource

    def close(self) -> None:
        """Let go (once, however often it is called); the last holder closes it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._holders.leave()
