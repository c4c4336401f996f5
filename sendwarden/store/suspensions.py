"""Which accounts are suspended: kept with their history in the durable database
(the consent database, SQLite or PostgreSQL), cached in the Redis every MTA host
shares.

A suspension is a staff decision and abuse evidence, so it must survive Redis being
restarted empty. The durable record is written first; Redis holds the current state
per account (the suspension's JSON, or ``-`` for "not suspended") so the milter's
check stays one GET per message. A missing cache entry (an empty Redis, or a
negative entry that expired) is filled from the database on first use.

For other parts of sendwarden (the support web page, the CLI) the interface is
:class:`SuspensionStore` plus :meth:`DurableSuspensionStore.history`, built by
:func:`suspension_store_from_settings`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from sendwarden.policy.suspension import Suspension
from sendwarden.store import Shared, StoreError, open_once
from sendwarden.store.redis import account_key, redis_errors

if typing.TYPE_CHECKING:
    from sendwarden.config import ConsentSettings, Settings

log = logging.getLogger(__name__)

#: The cache's "not suspended" entry (a suspension is JSON, so never this).
NOT_SUSPENDED = b"-"
#: Most accounts the milter's suspension cache remembers.
MAX_CACHED = 100_000
#: How long "not suspended" is believed without asking the database again: bounds
#: how long a suspension whose cache write failed can go unnoticed.
NEGATIVE_TTL_SECONDS = 3600
#: How often an automatic suspension the database could not take is tried again.
RETRY_UNRECORDED_SECONDS = 30.0


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SuspensionStore(Protocol):
    def get(self, account_id: str) -> Suspension | None: ...
    def suspend(self, account_id: str, suspension: Suspension) -> None: ...
    def lift(self, account_id: str, by: str = "", reason: str = "") -> bool: ...


@dataclass(frozen=True, slots=True)
class SuspensionEvent:
    """One line of an account's suspension history."""

    account: str
    action: typing.Literal["suspended", "lifted"]
    at: str  # ISO 8601 UTC
    by: str  # the staff member, or the automatic rule
    reason: str


class RedisSuspensionStore:
    """The cache: one small value per account; absence means "not known here"."""

    def __init__(self, client: redis.Redis, prefix: str = "sw") -> None:
        self._client = client
        self._prefix = prefix

    def key(self, account_id: str) -> str:
        return account_key(self._prefix, account_id, "suspended")

    def lookup(self, account_id: str) -> tuple[bool, Suspension | None]:
        """``(known, suspension)``: known is False when the cache has no entry."""
        with redis_errors("reading the suspension of " + account_id):
            raw = typing.cast(bytes | None, self._client.get(self.key(account_id)))
        if raw is None:
            return False, None
        return True, None if raw == NOT_SUSPENDED else parse_suspension(raw)

    def get(self, account_id: str) -> Suspension | None:
        return self.lookup(account_id)[1]

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        value = json.dumps(
            {"reason": suspension.reason, "since": suspension.since, "by": suspension.by}
        )
        with redis_errors("suspending " + account_id):
            self._client.set(self.key(account_id), value)

    def remember_active(self, account_id: str) -> None:
        """Cache "not suspended" (for a while: the database stays the authority)."""
        with redis_errors("caching the suspension state of " + account_id):
            self._client.set(self.key(account_id), NOT_SUSPENDED, ex=NEGATIVE_TTL_SECONDS)

    def lift(self, account_id: str, by: str = "", reason: str = "") -> bool:
        with redis_errors("lifting the suspension of " + account_id):
            raw = typing.cast(
                bytes | None,
                self._client.set(
                    self.key(account_id), NOT_SUSPENDED, ex=NEGATIVE_TTL_SECONDS, get=True
                ),
            )
        return raw is not None and raw != NOT_SUSPENDED


class Database(Protocol):
    """What the history needs of the durable database (SqlConsentStore.execute)."""

    def execute(self, what: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class SuspensionRecords:
    """The append-only history in the durable database; the newest row is the state."""

    def __init__(self, database: Callable[[], Database]) -> None:
        self._database = database  # opened on first use (StoreError if unreachable)

    def add(self, account_id: str, action: str, at: str, by: str, reason: str) -> None:
        self._database().execute(
            f"recording the suspension history of {account_id}",
            "INSERT INTO account_suspensions (account, action, at, actor, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (account_id, action, at, by, reason),
        )

    def current(self, account_id: str) -> Suspension | None:
        rows = self._database().execute(
            f"reading the suspension of {account_id}",
            "SELECT action, at, actor, reason FROM account_suspensions "
            "WHERE account = ? ORDER BY id DESC LIMIT 1",
            (account_id,),
        )
        if not rows or rows[0][0] != "suspended":
            return None
        _, at, by, reason = rows[0]
        return Suspension(reason=str(reason), since=str(at), by=str(by))

    def history(self, account_id: str) -> list[SuspensionEvent]:
        rows = self._database().execute(
            f"reading the suspension history of {account_id}",
            "SELECT account, action, at, actor, reason FROM account_suspensions "
            "WHERE account = ? ORDER BY id",
            (account_id,),
        )
        return [
            SuspensionEvent(str(a), typing.cast(Any, str(action)), str(at), str(by), str(why))
            for a, action, at, by, why in rows
        ]

    def close(self) -> None:
        """Close the database if this store opened it (a SharedDatabase)."""
        close = getattr(self._database, "close", None)
        if callable(close):
            close()


class DurableSuspensionStore:
    """Suspensions in the durable database, cached in Redis. Thread-safe."""

    def __init__(self, cache: RedisSuspensionStore, records: SuspensionRecords) -> None:
        self.cache = cache
        self.records = records
        self._lock = threading.Lock()
        self._unrecorded: list[tuple[str, Suspension]] = []  # automatic, database was down
        self._retry_at = 0.0  # monotonic: retry the unrecorded ones not before this

    def get(self, account_id: str) -> Suspension | None:
        """One Redis GET when cached; otherwise the database, then cached."""
        known, suspension = self.cache.lookup(account_id)
        if self._unrecorded and time.monotonic() >= self._retry_at:
            self._record_pending()
        if known:
            return suspension
        suspension = self.records.current(account_id)
        if suspension is None:
            self.cache.remember_active(account_id)
        else:
            self.cache.suspend(account_id, suspension)
        return suspension

    def get_absent(self, account_id: str) -> Suspension | None:
        """For an account Redis was just seen to have no entry for (by the rate
        limit's MAIL script): the database's answer, without asking Redis again. A
        suspension is put in Redis at once; "not suspended" is left for the caller to
        cache in a round trip it makes anyway (CachedSuspensions.take_fill)."""
        if self._unrecorded and time.monotonic() >= self._retry_at:
            self._record_pending()
        suspension = self.records.current(account_id)
        if suspension is not None:
            self.cache.suspend(account_id, suspension)
        return suspension

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        """Record (durably first), then put in effect on every host through Redis."""
        self.records.add(account_id, "suspended", suspension.since, suspension.by,
                         suspension.reason)  # fmt: skip
        self.cache.suspend(account_id, suspension)

    def lift(self, account_id: str, by: str = "", reason: str = "", at: str = "") -> bool:
        """Lift (recording who and why, at ``at`` or now); False if the account was not
        suspended."""
        if self.records.current(account_id) is None:
            self.cache.lift(account_id)  # a stale cache entry goes too
            return False
        self.records.add(account_id, "lifted", at or utc_now_text(), by, reason)
        self.cache.lift(account_id, by, reason)
        return True

    def history(self, account_id: str) -> list[SuspensionEvent]:
        """Every suspension and lifting of the account, oldest first."""
        return self.records.history(account_id)

    def recorded_automatically(self, account_id: str, suspension: Suspension) -> None:
        """The rate limiter suspended the account in Redis (atomically, in its
        script): record it durably. If the database is down, keep it and retry."""
        try:
            self.records.add(account_id, "suspended", suspension.since, suspension.by,
                             suspension.reason)  # fmt: skip
        except StoreError as error:
            log.error(
                "the automatic suspension of %s is in effect but not yet recorded durably "
                "(%s); retrying",
                account_id,
                error,
            )
            with self._lock:
                self._unrecorded.append((account_id, suspension))
                # not on every message while the database is down: once in a while
                self._retry_at = time.monotonic() + RETRY_UNRECORDED_SECONDS

    def close(self) -> None:
        self.records.close()

    def _record_pending(self) -> None:
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for account_id, suspension in pending:
            self.recorded_automatically(account_id, suspension)


def parse_suspension(raw: bytes | str) -> Suspension:
    """Read a stored suspension; an unreadable value still suspends (fail closed)."""
    try:
        data = json.loads(raw)
        return Suspension(
            reason=str(data["reason"]), since=str(data["since"]), by=str(data.get("by", ""))
        )
    except (ValueError, KeyError, TypeError):
        return Suspension(reason="suspended (record unreadable)", since="unknown")


class _OpenedDatabase:
    """The durable database, opened on first use (or ahead of it: :meth:`open_soon`)."""

    def __init__(self, settings: ConsentSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # held while the database is being opened
        self._store: Any = None
        self._closed = False  # a late opener (the warm-up) must not open it again

    def get(self) -> Any:
        """The open database. While one thread opens it the others wait at most
        ``consent.timeout_ms`` (then StoreError), never one behind another."""
        store = self._store
        if store is not None:
            return store
        return open_once(self._lock, self.settings.timeout_ms, self._open)

    def open_soon(self) -> threading.Thread | None:
        """Begin opening it in a daemon thread, through :meth:`get` (the same lock), so
        the first messages after a start or reload find it open, or nearly: under
        load, importing the driver, connecting and checking the schema can outlast
        ``consent.timeout_ms`` and tempfail them. None if it is open already."""
        if self._store is not None or self._closed:
            return None
        thread = threading.Thread(target=self._warm, name="open consent database", daemon=True)
        thread.start()
        return thread

    def _warm(self) -> None:
        try:
            self.get()
        except Exception as error:  # a head start only: the first message tries again
            log.info("consent database not opened ahead of the first message: %s", error)

    def _open(self) -> Any:
        if self._closed:
            raise StoreError("consent database", "closed")
        if self._store is None:
            from sendwarden.consent.store import open_from_settings  # driver on demand

            self._store = open_from_settings(self.settings)
        return self._store

    def close(self) -> None:
        with self._lock:  # an open under way finishes first, and is closed here
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()


class SharedDatabase:
    """The durable database of one configuration, opened once on first use and
    shared (the consent check and the suspension store use one pool).

    A reload hands the running configuration's to the new one (``previous``): when
    both name the same database with the same timeout, the pool and its open
    connections carry over (see :class:`~sendwarden.store.Shared`), and the pool is
    closed when the last configuration using it is."""

    def __init__(self, settings: Settings, previous: SharedDatabase | None = None) -> None:
        consent = settings.consent
        self._shared: Shared[_OpenedDatabase] = Shared(
            (consent.database, consent.timeout_ms),
            lambda: _OpenedDatabase(consent),
            _OpenedDatabase.close,
            previous._shared if previous is not None else None,
        )

    def __call__(self) -> Any:
        """The open database (StoreError when it cannot be opened in time)."""
        return self._shared.resource.get()

    def open_soon(self) -> threading.Thread | None:
        """Start opening it in the background (see :meth:`_OpenedDatabase.open_soon`);
        for the long-running servers, not the CLI, which may never need it."""
        return self._shared.resource.open_soon()

    def close(self) -> None:
        """Give this configuration's use back (once, however often it is called)."""
        self._shared.close()


def suspension_store_from_settings(
    settings: Settings, client: redis.Redis, database: Callable[[], Database] | None = None
) -> DurableSuspensionStore:
    """The suspension store of a configuration: its Redis cache and its durable
    database (``[consent] database``)."""
    return DurableSuspensionStore(
        RedisSuspensionStore(client, settings.redis.key_prefix),
        SuspensionRecords(database or SharedDatabase(settings)),
    )


class CachedSuspensions:
    """A :class:`SuspensionStore` that remembers "not suspended" for ``ttl`` seconds,
    so the MAIL-time check costs no round trip right after the rate limit's MAIL
    reservation read the same key (and refused the account if it was suspended).

    Never the last word: every reservation script refuses a suspended account
    whatever this cache says, and every reservation's answer refreshes it.
    "Suspended" is never cached, so a lifted suspension takes effect at once.

    When the reservation found no entry in Redis at all (a new account, or its
    "not suspended" entry expired), the durable store is asked without a Redis GET,
    and "not suspended" is written to Redis by the rate limit's end-of-message round
    trip (:meth:`take_fill`; only if the key is still absent then, so a suspension
    made meanwhile is never overwritten): no round trip of its own either way.
    """

    def __init__(
        self, store: SuspensionStore, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._clear_until: dict[str, float] = {}
        self._absent_until: dict[str, float] = {}  # Redis had no entry, seen just now
        self._to_fill: set[str] = set()  # "not suspended" to write to Redis

    def get(self, account_id: str) -> Suspension | None:
        now = self._clock()
        if self._clear_until.get(account_id, 0.0) > now:
            return None
        get_absent = getattr(self._store, "get_absent", None)
        if self._absent_until.pop(account_id, 0.0) > now and get_absent is not None:
            suspension = typing.cast(Suspension | None, get_absent(account_id))
            if suspension is None:
                self.seen_unsuspended(account_id)
                if len(self._to_fill) < MAX_CACHED:
                    self._to_fill.add(account_id)
            return suspension
        suspension = self._store.get(account_id)
        if suspension is None:
            self.seen_unsuspended(account_id)
        else:
            self._clear_until.pop(account_id, None)
        return suspension

    def seen_unsuspended(self, account_id: str) -> None:
        """A store answer just now said the account is not suspended."""
        if len(self._clear_until) >= MAX_CACHED:
            self._clear_until.clear()  # bounded; account ids come from the config
        self._clear_until[account_id] = self._clock() + self._ttl

    def seen_suspended(self, account_id: str) -> None:
        self._clear_until.pop(account_id, None)
        self._absent_until.pop(account_id, None)

    def seen_absent(self, account_id: str) -> None:
        """A reservation just found no suspension entry for the account in Redis."""
        if len(self._absent_until) >= MAX_CACHED:
            self._absent_until.clear()
        self._absent_until[account_id] = self._clock() + self._ttl

    def take_fill(self, account_id: str) -> int:
        """Seconds to cache "not suspended" for the account in Redis (0: nothing to
        write): once, after the durable store said so (see the class docstring)."""
        if account_id in self._to_fill:
            self._to_fill.discard(account_id)
            return NEGATIVE_TTL_SECONDS
        return 0

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        self._clear_until.pop(account_id, None)
        self._store.suspend(account_id, suspension)

    def lift(self, account_id: str, by: str = "", reason: str = "") -> bool:
        return self._store.lift(account_id, by, reason)

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if callable(close):
            close()
