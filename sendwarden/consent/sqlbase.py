"""What the SQLite and PostgreSQL ledgers share: chaining appends, decoding rows,
verification, migrations, a small connection pool, and turning every database
failure into :class:`~sendwarden.store.StoreError`.

A backend supplies the dialect: how to connect, lock the chain head for an append
(or the schema for a migration), bulk-insert rows, run a migration script, and run
the few queries whose SQL differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from sendwarden import metrics
from sendwarden.addresses import normalise_address
from sendwarden.consent.ledger import (
    ChainHead,
    ChainLink,
    canonical_time,
    content_hash,
    event_content,
    neighbour_seqs,
    verify_chain,
    verify_links,
)
from sendwarden.consent.model import ChainReport, EventKind, NewEvent, StoredEvent
from sendwarden.consent.records import normalise_recipient
from sendwarden.store import StoreError, answered
from sendwarden.store.deadline import WATCHDOG

BACKEND = "consent database"  # how replies and logs name this store
METRICS_BACKEND = "consent"  # the backend label of the store metrics
#: Stored columns, in the order rows are inserted and selected.
COLUMNS = (
    "seq", "account", "recipient", "list_id", "kind", "occurred_at", "confirmed_at",
    "recorded_at", "recorded_by", "method", "source", "ip", "evidence", "prev_hash", "hash",
)  # fmt: skip
SELECT_EVENTS = f"SELECT {', '.join(COLUMNS)} FROM consent_events"
#: An append this big refreshes the planner's statistics, so the first bulk-mail checks
#: after a large import already use the index the way they will later.
ANALYZE_AFTER = 10_000
MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgresql)\.sql$")


class _Connection(Protocol):
    def close(self) -> None: ...


Clock = Callable[[], datetime]
Conn = TypeVar("Conn", bound=_Connection)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The versioned schema changes shipped for one dialect, oldest first."""
    found = []
    for entry in importlib.resources.files("sendwarden.consent.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match and match.group(3) == dialect:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda migration: migration.version)


def check_schema_version(current: int, known: Sequence[Migration]) -> list[Migration]:
    """The migrations still to apply; refuses a database newer than this code."""
    newest = known[-1].version if known else 0
    if current > newest:
        raise StoreError(
            BACKEND,
            f"schema version {current} is newer than this sendwarden understands ({newest}); "
            "upgrade sendwarden on this host",
        )
    return [migration for migration in known if migration.version > current]


class ConnectionPool(Generic[Conn]):
    """At most ``size`` connections, reused across threads one user at a time. A
    connection that saw an error is closed rather than trusted again, and so are the
    idle ones: after a database restart they are all dead, and one failed query
    should be the whole cost, not one per pooled connection."""

    def __init__(
        self,
        connect: Callable[[], Conn],
        close: Callable[[Conn], None],
        size: int,
        wait_seconds: float,
    ) -> None:
        self._connect = connect
        self._close = close
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._size = size
        self._wait = wait_seconds
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        if self._closed:
            raise StoreError(BACKEND, "the store has been closed")
        if not self._slots.acquire(timeout=self._wait):
            raise StoreError(BACKEND, f"all {self._size} connections are busy")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            except BaseException:
                self._discard(conn)
                self._discard_idle()
                raise
            with self._lock:
                if self._closed:
                    self._discard(conn)
                else:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def _discard(self, conn: Conn) -> None:
        with contextlib.suppress(Exception):
            self._close(conn)

    def _discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._discard_idle()


def checked_event(event: NewEvent) -> NewEvent:
    """Refuse events the ledger must never hold; store the address normalised once."""
    if not event.account.strip():
        raise ValueError("a consent event needs an account")
    if not event.recorded_by.strip():
        raise ValueError("a consent event must say who recorded it")
    if not isinstance(event.kind, EventKind):
        raise ValueError(f"unknown event kind {event.kind!r}")
    for moment in (event.occurred_at, event.confirmed_at):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{moment!r} has no time zone; the ledger needs aware UTC times")
    recipient = normalise_recipient(event.recipient)
    return (
        event if recipient == event.recipient else dataclasses.replace(event, recipient=recipient)
    )


class SqlConsentStore(ABC, Generic[Conn]):
    """A ConsentStore over a SQL database; subclasses give the dialect."""

    #: Python exception types of the driver that mean "the database failed".
    driver_errors: tuple[type[BaseException], ...] = ()
    #: True when times are stored as canonical text (SQLite), False for timestamptz.
    times_are_text = True
    #: The driver's parameter marker.
    placeholder = "?"
    #: Which migration files apply (``NNNN_name.DIALECT.sql``).
    dialect: str
    #: CREATE TABLE IF NOT EXISTS of the table recording applied migrations.
    schema_table_sql: str

    def __init__(self, *, timeout_ms: int, clock: Clock | None, pool_size: int) -> None:
        self.timeout_ms = timeout_ms
        self._clock = clock or utc_now
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            self._connect, self._close_connection, pool_size, max(timeout_ms / 1000, 0.001)
        )

    # -- dialect hooks -------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Conn: ...

    def _close_connection(self, conn: Conn) -> None:
        conn.close()

    @abstractmethod
    def _append_transaction(self, conn: Conn) -> contextlib.AbstractContextManager[Any]:
        """A write transaction holding the chain lock; yields a cursor."""

    @abstractmethod
    def _snapshot(self, conn: Conn) -> contextlib.AbstractContextManager[Any]:
        """A read-only transaction with one consistent view; yields a cursor. For
        reads of several statements; one statement is consistent by itself."""

    @contextlib.contextmanager
    def _statement(self, conn: Any) -> Iterator[Any]:
        """A cursor for one self-contained statement: no transaction round trips (the
        milter's consent check is one query, one round trip), bounded by
        ``timeout_ms`` on this side: a database that stops answering (hung, paused)
        has the call ended by the watchdog (:meth:`_abort`)."""
        cursor = conn.cursor()
        try:
            with WATCHDOG.limit(self.timeout_ms / 1000, lambda: self._abort(conn)) as deadline:
                try:
                    yield cursor
                except self.driver_errors as error:
                    if deadline.expired:
                        raise StoreError(
                            BACKEND, f"no answer within {self.timeout_ms} ms (call ended)"
                        ) from error
                    raise
        finally:
            with contextlib.suppress(*self.driver_errors):
                cursor.close()

    def _abort(self, conn: Conn) -> None:
        """End a call that is past its deadline, from the watchdog's thread, so the
        blocked driver call fails at once (the connection is discarded after)."""

    @abstractmethod
    def _insert_rows(self, cursor: Any, rows: Iterable[tuple[Any, ...]]) -> None: ...

    @abstractmethod
    def _run_script(self, cursor: Any, sql: str) -> None:
        """Run a migration file (several statements, no parameters)."""

    @abstractmethod
    def _time_from(self, value: Any) -> datetime:
        """A stored time back as an aware UTC datetime."""

    @abstractmethod
    def _query(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _stream_events(self, cursor: Any) -> Generator[tuple[Any, ...], None, None]:
        """Every event row in sequence order, fetched in chunks."""

    @abstractmethod
    def _consenting_rows(
        self, cursor: Any, account: str, recipients: list[str], list_id: str
    ) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _rows_by_seq(self, cursor: Any, seqs: list[int]) -> list[tuple[Any, ...]]: ...

    # -- shared behaviour ----------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Any driver failure becomes a StoreError naming what was being done (and every
        call is counted and timed for the metrics)."""
        try:
            with metrics.store_call(METRICS_BACKEND, (StoreError, *self.driver_errors)):
                yield
        except self.driver_errors as error:
            detail = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise StoreError(BACKEND, f"{what}: {detail}") from error
        answered(BACKEND)

    def needs_migration(self) -> bool:
        """Whether the schema is behind (or ahead of) this code: read without any
        lock, so opening an up-to-date database never waits for a writer."""
        known = migrations(self.dialect)
        newest = known[-1].version if known else 0
        try:
            with self._pool.connection() as conn, self._statement(conn) as cursor:
                rows = self._query(cursor, "SELECT MAX(version) FROM consent_schema", ())
        except self.driver_errors:
            return True  # no schema table yet (migrate() reports any other failure)
        current = int(rows[0][0] or 0) if rows else 0
        return current != newest

    def _apply_migrations(self, cursor: Any) -> int:
        """Bring the schema up to date in the caller's transaction, which must keep
        other processes from migrating at the same time; returns the schema version."""
        self._query(cursor, self.schema_table_sql, ())
        rows = self._query(cursor, "SELECT COALESCE(MAX(version), 0) FROM consent_schema", ())
        known = migrations(self.dialect)
        p = self.placeholder
        for migration in check_schema_version(int(rows[0][0]) if rows else 0, known):
            self._run_script(cursor, migration.sql)
            applied_at = self._clock()
            self._query(
                cursor,
                f"INSERT INTO consent_schema VALUES ({p}, {p}, {p})",
                (
                    migration.version,
                    migration.name,
                    canonical_time(applied_at) if self.times_are_text else applied_at,
                ),
            )
        return known[-1].version if known else 0

    def _row(
        self, seq: int, event: NewEvent, recorded_at: datetime, prev: str
    ) -> tuple[tuple[Any, ...], str]:
        """The row to insert and the event's hash."""
        content = event_content(event, recorded_at)
        digest = content_hash(seq, prev, content)
        if self.times_are_text:
            return (seq, *content, prev, digest), digest
        confirmed = event.confirmed_at
        row = (
            seq, event.account, event.recipient, event.list_id, event.kind.value,
            event.occurred_at, confirmed, recorded_at, event.recorded_by, event.method,
            event.source, event.ip, event.evidence, prev, digest,
        )  # fmt: skip
        return row, digest

    def _link(self, row: Sequence[Any]) -> ChainLink:
        """A stored row as the chain sees it; no event object is built."""
        content = tuple(row[1:13])
        if not self.times_are_text:
            content = tuple(
                canonical_time(value) if isinstance(value, datetime) else value for value in content
            )
        return ChainLink(int(row[0]), row[13], row[14], content)

    def _stored(self, row: Sequence[Any]) -> StoredEvent:
        (seq, account, recipient, list_id, kind, occurred_at, confirmed_at, recorded_at,
         recorded_by, method, source, ip, evidence, prev_hash, digest) = row  # fmt: skip
        event = NewEvent(
            account=account,
            recipient=recipient,
            kind=EventKind(kind),
            occurred_at=self._time_from(occurred_at),
            recorded_by=recorded_by,
            list_id=list_id,
            method=method,
            source=source,
            ip=ip,
            confirmed_at=self._time_from(confirmed_at) if confirmed_at is not None else None,
            evidence=evidence,
        )
        return StoredEvent(int(seq), event, self._time_from(recorded_at), prev_hash, digest)

    def _head(self, cursor: Any) -> ChainHead:
        rows = self._query(cursor, "SELECT last_seq, last_hash FROM consent_chain WHERE id = 1", ())
        if not rows:
            raise StoreError(BACKEND, "the chain head row is missing (the table was edited)")
        return ChainHead(int(rows[0][0]), str(rows[0][1]))

    def append(self, events: Iterable[NewEvent]) -> int:
        """Append in one transaction, each event sealed to the one before it. The
        iterable is consumed while the chain is locked, so a million-row import streams
        in bounded memory; if it raises, nothing is recorded."""
        with (
            self._errors("recording consent"),
            self._pool.connection() as conn,
            self._append_transaction(conn) as cursor,
        ):
            head = self._head(cursor)
            recorded_at = self._clock()
            last_seq, last_hash = head.seq, head.hash

            def sealed_rows() -> Iterator[tuple[Any, ...]]:
                nonlocal last_seq, last_hash
                for raw in events:
                    row, digest = self._row(
                        last_seq + 1, checked_event(raw), recorded_at, last_hash
                    )
                    yield row
                    last_seq, last_hash = last_seq + 1, digest

            self._insert_rows(cursor, sealed_rows())
            if last_seq - head.seq >= ANALYZE_AFTER:
                self._query(cursor, "ANALYZE consent_events", ())
            if last_seq != head.seq:
                p = self.placeholder
                self._query(
                    cursor,
                    f"UPDATE consent_chain SET last_seq = {p}, last_hash = {p} WHERE id = 1",
                    (last_seq, last_hash),
                )
            return last_seq - head.seq

    def history(self, recipient: str, account: str | None = None) -> list[StoredEvent]:
        address = normalise_address(recipient)
        p = self.placeholder
        sql, params = f"{SELECT_EVENTS} WHERE recipient = {p}", [address]
        if account is not None:
            sql, params = sql + f" AND account = {p}", [*params, account]
        with (
            self._errors("reading consent history"),
            self._pool.connection() as conn,
            self._statement(conn) as cursor,
        ):
            rows = self._query(cursor, sql + " ORDER BY occurred_at, seq", params)
        return [self._stored(row) for row in rows]

    def consenting(self, account: str, recipients: Sequence[str], list_id: str = "") -> set[str]:
        spelled: dict[str, list[str]] = {}
        for recipient in recipients:
            spelled.setdefault(normalise_address(recipient), []).append(recipient)
        if not spelled:
            return set()
        with (
            self._errors(f"checking consent for account {account}"),
            self._pool.connection() as conn,
            self._statement(conn) as cursor,
        ):
            rows = self._consenting_rows(cursor, account, list(spelled), list_id)
        return {original for (address,) in rows for original in spelled.get(address, ())}

    def head(self) -> ChainHead:
        with (
            self._errors("reading the chain head"),
            self._pool.connection() as conn,
            self._statement(conn) as cursor,
        ):
            return self._head(cursor)

    def verify(self, progress: Callable[[int], None] | None = None) -> ChainReport:
        """Walk the chain in one consistent snapshot; ``progress(n)`` every 10,000 events."""
        with (
            self._errors("verifying the consent ledger"),
            self._pool.connection() as conn,
            self._snapshot(conn) as cursor,
        ):
            head = self._head(cursor)
            rows = self._stream_events(cursor)
            try:
                return verify_chain(self._links(rows, progress), head)
            finally:
                rows.close()  # a break ends the scan before the transaction ends

    def _links(
        self, rows: Iterator[tuple[Any, ...]], progress: Callable[[int], None] | None
    ) -> Iterator[ChainLink]:
        for count, row in enumerate(rows, 1):
            if progress is not None and count % 10_000 == 0:
                progress(10_000)
            yield self._link(row)

    def verify_events(self, seqs: Iterable[int]) -> ChainReport:
        targets = list(seqs)
        with (
            self._errors("verifying consent events"),
            self._pool.connection() as conn,
            self._snapshot(conn) as cursor,
        ):
            head = self._head(cursor)
            wanted = sorted(neighbour_seqs(targets, head))
            rows = self._rows_by_seq(cursor, wanted) if wanted else []
        found = {link.seq: link for link in map(self._link, rows)}
        return verify_links(targets, found, head)

    def execute(self, what: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One self-contained statement on this database (``?`` placeholders, turned
        into the driver's); the rows it returns. For the small stores that share the
        durable database (sendwarden.store.suspensions). Raises StoreError."""
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        with self._errors(what), self._pool.connection() as conn, self._statement(conn) as cursor:
            return self._query(cursor, sql, params)

    def close(self) -> None:
        self._pool.close()
