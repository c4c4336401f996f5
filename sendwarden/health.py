"""What ``/healthz`` asks: does Redis answer, does the consent store answer. Also the
consent ledger's size for the metrics, from the same connection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from sendwarden.config import ConsentSettings
from sendwarden.consent.model import ConsentStore
from sendwarden.metrics import HealthCheck, Metrics
from sendwarden.store import StoreError

log = logging.getLogger(__name__)


def redis_check(client: Callable[[], redis.Redis]) -> HealthCheck:
    """PING through the running configuration's client (None: it answered)."""

    def check() -> str | None:
        try:
            client().ping()
        except redis.RedisError as error:
            return f"redis: {error}"
        return None

    return check


class ConsentProbe:
    """Its own connection to the ledger, opened when first asked (a milter whose
    customers send no bulk mail still reports the ledger), reopened after a failure
    or when the configured database changes."""

    def __init__(self, settings: Callable[[], ConsentSettings]) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._store: ConsentStore | None = None
        self._database = ""

    def size(self) -> int | None:
        """Events in the ledger; None when it does not answer."""
        try:
            with self._lock:
                return self._open().head().seq
        except StoreError:
            self._reset()
            return None

    def check(self) -> str | None:
        try:
            with self._lock:
                self._open().head()
        except StoreError as error:
            self._reset()
            return str(error)
        return None

    def close(self) -> None:
        self._reset()

    def _open(self) -> ConsentStore:
        settings = self._settings()
        if self._store is not None and self._database != settings.database:
            self._store.close()
            self._store = None
        if self._store is None:
            from sendwarden.consent.store import open_from_settings  # the driver when needed

            self._store = open_from_settings(settings)
            self._database = settings.database
        return self._store

    def _reset(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                log.debug("closing the consent probe's store failed", exc_info=True)


def standard_checks(
    client: Callable[[], redis.Redis], probe: ConsentProbe, metrics: Metrics | None
) -> dict[str, HealthCheck]:
    """Redis and the consent store, and the ledger size gauge fed from the same probe."""
    if metrics is not None:
        metrics.watch_consent_size(probe.size)
    return {"redis": redis_check(client), "consent": probe.check}
