"""The consent ledger in SQLite: embedded, one file, WAL so the milter's reads never
wait for a writer. Appends take the write lock up front (BEGIN IMMEDIATE), which
keeps the hash chain linear when several processes record at once."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sendwarden.consent.ledger import parse_canonical_time
from sendwarden.consent.sqlbase import COLUMNS, SELECT_EVENTS, Clock, SqlConsentStore

MEMORY = ":memory:"
APPEND_CACHE_KIB = 256 * 1024
READ_CACHE_KIB = 8 * 1024
_INSERT = (
    f"INSERT INTO consent_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)

# The newest event that applies (account-wide or this list) per wanted recipient.
_CONSENTING = """
SELECT wanted.value FROM json_each(?) AS wanted
WHERE (SELECT e.kind FROM consent_events AS e
       WHERE e.account = ? AND e.recipient = wanted.value AND e.list_id IN ('', ?)
       ORDER BY e.occurred_at DESC, e.seq DESC LIMIT 1) = 'granted'
"""


class SQLiteConsentStore(SqlConsentStore[sqlite3.Connection]):
    driver_errors = (sqlite3.Error,)
    dialect = "sqlite"
    schema_table_sql = (
        "CREATE TABLE IF NOT EXISTS consent_schema ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )

    def __init__(
        self,
        path: str,
        *,
        timeout_ms: int = 1000,
        clock: Clock | None = None,
        pool_size: int = 8,
        migrate: bool = True,
    ) -> None:
        super().__init__(timeout_ms=timeout_ms, clock=clock, pool_size=pool_size)
        self.path = path
        self._memory_keeper: sqlite3.Connection | None = None
        if path == MEMORY:
            # One in-memory database shared by the pool's connections, alive until close().
            self._memory_uri = f"file:sendwarden-consent-{id(self)}?mode=memory&cache=shared"
            self._memory_keeper = self._connect()
        if migrate and self.needs_migration():
            self.migrate()

    def __repr__(self) -> str:
        return f"<SQLiteConsentStore {self.path}>"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._memory_uri if self.path == MEMORY else self.path,
            timeout=self.timeout_ms / 1000,  # busy timeout: how long to wait for a writer
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,  # the pool hands it to one thread at a time
            uri=self.path == MEMORY,
        )
        conn.execute("PRAGMA synchronous = FULL")  # evidence survives a power cut
        conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
        return conn

    def _abort(self, conn: sqlite3.Connection) -> None:
        conn.interrupt()  # the running statement fails with "interrupted"

    def close(self) -> None:
        super().close()
        if self._memory_keeper is not None:
            self._memory_keeper.close()
            self._memory_keeper = None

    def migrate(self) -> int:
        """Bring the schema up to date (idempotent, safe with concurrent processes);
        returns the schema version."""
        with self._errors(f"opening {self.path}"), self._pool.connection() as conn:
            conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
            with _transaction(conn, "BEGIN IMMEDIATE") as cursor:
                return self._apply_migrations(cursor)

    @contextlib.contextmanager
    def _append_transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
        # A million-row import updates two indexes at random places: a big page cache
        # for the duration keeps that in memory; it shrinks back afterwards.
        conn.execute(f"PRAGMA cache_size = -{APPEND_CACHE_KIB}")
        try:
            with _transaction(conn, "BEGIN IMMEDIATE") as cursor:
                yield cursor
        finally:
            conn.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")

    def _snapshot(self, conn: sqlite3.Connection) -> contextlib.AbstractContextManager[Any]:
        return _transaction(conn, "BEGIN DEFERRED")

    def _insert_rows(self, cursor: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        cursor.executemany(_INSERT, rows)

    def _run_script(self, cursor: Any, sql: str) -> None:
        for statement in _statements(sql):
            cursor.execute(statement)

    def _time_from(self, value: Any) -> datetime:
        return parse_canonical_time(str(value))

    def _query(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return list(cursor.execute(sql, params).fetchall())

    def _stream_events(self, cursor: Any) -> Generator[tuple[Any, ...], None, None]:
        cursor.arraysize = 10_000
        cursor.execute(SELECT_EVENTS + " ORDER BY seq")
        while chunk := cursor.fetchmany():
            yield from chunk

    def _consenting_rows(
        self, cursor: Any, account: str, recipients: list[str], list_id: str
    ) -> list[tuple[Any, ...]]:
        return self._query(cursor, _CONSENTING, (json.dumps(recipients), account, list_id))

    def _rows_by_seq(self, cursor: Any, seqs: list[int]) -> list[tuple[Any, ...]]:
        return self._query(
            cursor,
            f"{SELECT_EVENTS} WHERE seq IN (SELECT value FROM json_each(?))",
            (json.dumps(seqs),),
        )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Cursor]:
    cursor = conn.cursor()
    cursor.execute(begin)
    try:
        yield cursor
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (triggers hold ';' inside BEGIN ... END)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending.strip()
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in a migration: {pending[:80]!r}")
