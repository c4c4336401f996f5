"""Which configuration each MTA connection uses, across reloads.

A connection keeps the pipeline it started with, so a reload never changes the rules
in the middle of a transaction. The configuration a reload replaces is closed (its
Redis pool, its consent store) as soon as the last connection still using it ends,
so reloading often leaks nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from sendwarden.pipeline import Pipeline

log = logging.getLogger(__name__)

#: A connection's pipeline and the call that gives it back when the connection ends.
Lease = tuple[Pipeline, Callable[[], None]]


class Closable(Protocol):
    """What a generation holds: the pipeline connections use and the resources behind it."""

    @property
    def pipeline(self) -> Pipeline: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=Closable)


class _Generation(Generic[R]):
    def __init__(self, runtime: R) -> None:
        self.runtime = runtime
        self.connections = 0
        self.retired = False


class Generations(Generic[R]):
    """The current runtime, and the retired ones that connections in flight still use."""

    def __init__(self, runtime: R) -> None:
        self._lock = threading.Lock()
        self._current = _Generation(runtime)
        self._retired: list[_Generation[R]] = []

    @property
    def current(self) -> R:
        return self._current.runtime

    @property
    def retired_in_use(self) -> int:
        """How many replaced configurations still wait for their last connection."""
        with self._lock:
            return len(self._retired)

    def lease(self) -> Lease:
        """The current pipeline for a new connection; call the returned function (once
        or more, only the first counts) when the connection ends."""
        with self._lock:
            generation = self._current
            generation.connections += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                generation.connections -= 1
                idle = generation.retired and generation.connections == 0
                if idle:
                    self._retired.remove(generation)
            if idle:
                ended = "previous configuration closed: its last connection ended"
                _close(generation.runtime, ended)

        return generation.runtime.pipeline, release

    def replace(self, runtime: R) -> None:
        """Make ``runtime`` the one new connections get; close the old one now if no
        connection uses it, else when its last connection ends."""
        with self._lock:
            old, self._current = self._current, _Generation(runtime)
            old.retired = True
            idle = old.connections == 0
            if not idle:
                self._retired.append(old)
        if idle:
            _close(old.runtime, "previous configuration closed: no connection used it")

    def close(self) -> None:
        """Close every generation (at shutdown, once connections have finished)."""
        with self._lock:
            generations = [self._current, *self._retired]
            self._retired = []
        for generation in generations:
            _close(generation.runtime, "configuration closed: the milter is stopping")


def _close(runtime: Closable, done: str) -> None:
    try:
        runtime.close()
    except Exception:  # a failing close must not take a connection's thread down
        log.exception("closing a configuration failed")
    else:
        log.info("%s", done)
