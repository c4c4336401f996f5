"""The consent ledger in PostgreSQL, shared by several MTA hosts. Appends lock the
chain-head row (SELECT ... FOR UPDATE) so concurrent writers on any host keep the
chain linear; bulk appends stream through COPY. Reads and lock waits are bounded
by ``timeout_ms`` (statement_timeout, lock_timeout)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sendwarden.consent.ledger import canonical_time
from sendwarden.consent.sqlbase import (
    BACKEND,
    COLUMNS,
    SELECT_EVENTS,
    Clock,
    SqlConsentStore,
    migrations,
)
from sendwarden.store import StoreError

#: pg_advisory_xact_lock key serialising schema migrations across hosts ("swcm").
_MIGRATION_LOCK = 0x7377636D

_CONSENTING = """
SELECT recipient FROM (
    SELECT DISTINCT ON (recipient) recipient, kind FROM consent_events
    WHERE account = %s AND recipient = ANY(%s) AND list_id IN ('', %s)
    ORDER BY recipient, occurred_at DESC, seq DESC
) AS latest
WHERE kind = 'granted'
"""


def describe_url(url: str) -> str:
    """``host:port/db`` for messages; never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "an unparsable PostgreSQL URL"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


class PostgresConsentStore(SqlConsentStore[psycopg.Connection[Any]]):
    driver_errors = (psycopg.Error,)
    placeholder = "%s"
    times_are_text = False
    dialect = "postgresql"
    schema_table_sql = (
        "CREATE TABLE IF NOT EXISTS consent_schema (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL)"
    )

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: int = 1000,
        clock: Clock | None = None,
        pool_size: int = 8,
        migrate: bool = True,
    ) -> None:
        super().__init__(timeout_ms=timeout_ms, clock=clock, pool_size=pool_size)
        self.url = url
        self.where = describe_url(url)
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"<PostgresConsentStore {self.where}>"

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,  # transactions are explicit (conn.transaction())
                connect_timeout=max(2, math.ceil(self.timeout_ms / 1000)),
            )
        except psycopg.Error as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise StoreError(BACKEND, f"cannot connect to {self.where}: {first_line}") from error
        conn.execute(
            f"SET statement_timeout = {int(self.timeout_ms)}; "
            f"SET lock_timeout = {int(self.timeout_ms)}; SET TimeZone = 'UTC'"
        )
        return conn

    def migrate(self) -> int:
        """Bring the schema up to date; hosts starting together wait for each other.
        A schema already up to date is only read, so roles without the right to create
        tables (the services', staff's: docs/operations.md) open the ledger too."""
        latest = migrations(self.dialect)[-1].version
        with (
            self._errors(f"reading the schema version of {self.where}"),
            self._pool.connection() as conn,
        ):
            exists = conn.execute("SELECT to_regclass('consent_schema') IS NOT NULL").fetchone()
            if exists and exists[0]:
                row = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM consent_schema"
                ).fetchone()
                if row and int(row[0]) == latest:
                    return latest
        with (
            self._errors(f"migrating {self.where}"),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cursor,
        ):
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("SET LOCAL lock_timeout = 0")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            return self._apply_migrations(cursor)

    @contextlib.contextmanager
    def _append_transaction(self, conn: psycopg.Connection[Any]) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cursor:
            # A big import is one long statement; waiting for the lock stays bounded.
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("SELECT 1 FROM consent_chain WHERE id = 1 FOR UPDATE")
            yield cursor

    @contextlib.contextmanager
    def _snapshot(self, conn: psycopg.Connection[Any]) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cursor

    def _insert_rows(self, cursor: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        with cursor.copy(f"COPY consent_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _run_script(self, cursor: Any, sql: str) -> None:
        cursor.execute(sql.encode("utf-8"))  # no parameters: a script

    def _time_from(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(canonical_time(value))

    def _query(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []

    def _stream_events(self, cursor: Any) -> Generator[tuple[Any, ...], None, None]:
        conn = cursor.connection
        with conn.cursor(name="consent_verify") as named:
            named.itersize = 10_000
            named.execute(SELECT_EVENTS + " ORDER BY seq")
            yield from named

    def _consenting_rows(
        self, cursor: Any, account: str, recipients: list[str], list_id: str
    ) -> list[tuple[Any, ...]]:
        return self._query(cursor, _CONSENTING, (account, recipients, list_id))

    def _rows_by_seq(self, cursor: Any, seqs: list[int]) -> list[tuple[Any, ...]]:
        return self._query(cursor, f"{SELECT_EVENTS} WHERE seq = ANY(%s)", (seqs,))
