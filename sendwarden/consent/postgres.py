"""The consent ledger in PostgreSQL, shared by several MTA hosts. Appends lock the
chain-head row (SELECT ... FOR UPDATE) so concurrent writers on any host keep the
chain linear; bulk appends stream through COPY. Reads and lock waits are bounded
by ``timeout_ms`` (statement_timeout, lock_timeout).

No server notice ever reaches this process (``client_min_messages = error`` from
the connection's start-up packet on). psycopg hands a notice to Python from inside
libpq through a C callback that takes the GIL with ``PyGILState_Ensure``; on
libmilter's worker threads pymilter manages Python thread states by hand and leaves
stale ones behind, so that callback crashed the milter (a segfault in
``_notice_handler``) on the first notice after a reload: ``CREATE TABLE IF NOT
EXISTS`` in the migration of the newly opened store sends one.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sendwarden.consent.ledger import canonical_time
from sendwarden.consent.sqlbase import BACKEND, COLUMNS, SELECT_EVENTS, Clock, SqlConsentStore
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


def startup_options(timeout_ms: int) -> str:
    """Server settings every connection starts with, in the start-up packet (no round
    trip; they win over ALTER DATABASE/ROLE defaults): no notices (see the module
    docstring), waits bounded by the server too, times in UTC."""
    return (
        "-c client_min_messages=error "
        f"-c statement_timeout={int(timeout_ms)} -c lock_timeout={int(timeout_ms)} "
        "-c TimeZone=UTC"
    )


def quiet_conninfo(url: str, timeout_ms: int = 1000) -> str:
    """``url`` with :func:`startup_options` added to any ``options`` the operator gave."""
    try:
        given = str(conninfo_to_dict(url).get("options") or "")
    except psycopg.Error:
        return url  # connecting reports the bad URL
    return make_conninfo(url, options=f"{given} {startup_options(timeout_ms)}".strip())


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
        self._conninfo = quiet_conninfo(url, timeout_ms)
        self.where = describe_url(url)
        if migrate and self.needs_migration():
            self.migrate()

    def __repr__(self) -> str:
        return f"<PostgresConsentStore {self.where}>"

    def _connect(self) -> psycopg.Connection[Any]:
        """A new connection within ``timeout_ms``: libpq's own connect timeout is whole
        seconds, at least 2, so the connection is made by a helper thread and given
        up on (closed when it arrives) once the deadline has passed."""
        result: list[psycopg.Connection[Any] | BaseException] = []
        arrived = threading.Event()
        lock = threading.Lock()  # one of: the caller takes the outcome, or gives up

        def attempt() -> None:
            outcome: psycopg.Connection[Any] | BaseException
            try:
                outcome = psycopg.connect(
                    self._conninfo,
                    autocommit=True,  # transactions are explicit (conn.transaction())
                    connect_timeout=max(2, math.ceil(self.timeout_ms / 1000)),
                )
            except BaseException as error:  # handed to the waiting thread
                outcome = error
            with lock:
                if result:  # the caller gave up: nobody will use it
                    if not isinstance(outcome, BaseException):
                        outcome.close()
                    return
                result.append(outcome)
                arrived.set()

        threading.Thread(target=attempt, name="sendwarden-pg-connect", daemon=True).start()
        arrived.wait(self.timeout_ms / 1000)
        with lock:
            if not result:
                result.append(TimeoutError())  # tells a late connection to close itself
                raise StoreError(
                    BACKEND,
                    f"cannot connect to {self.where}: no answer within {self.timeout_ms} ms",
                )
        outcome = result[0]
        if isinstance(outcome, psycopg.Error):
            text = str(outcome).strip()
            first_line = text.splitlines()[0] if text else ""
            raise StoreError(BACKEND, f"cannot connect to {self.where}: {first_line}") from outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _abort(self, conn: psycopg.Connection[Any]) -> None:
        """Shut the connection's socket: the blocked libpq call sees the connection end
        (the server may be paused or hung and never answer a cancel request)."""
        try:
            fd = conn.pgconn.socket
        except psycopg.Error:
            return
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def migrate(self) -> int:
        """Bring the schema up to date; hosts starting together wait for each other."""
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
