"""Storage behind small interfaces. Every backend raises :class:`StoreError`, so
the pipeline maps any storage failure to the one ``on_store_error`` setting."""

from __future__ import annotations

import logging
import threading


class StoreError(Exception):
    """A backend (Redis, the consent database) could not answer in time."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend}: {detail}")
        self.backend = backend
        self.detail = detail


class StoreHealth:
    """Logs a storage outage once when it starts and once when it ends, not once per
    message: ``failed`` on every error, ``succeeded`` when a call got through."""

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

    def succeeded(self) -> None:
        if not self._down:  # the common case, without the lock
            return
        with self._lock:
            recovered, self._down = self._down, set()
        for backend in sorted(recovered):
            self._log.warning("%s is available again", backend)
