"""No PostgreSQL notice reaches sendwarden (issue 13, item 2): psycopg's notice
callback crashed the milter on libmilter's threads, so every connection asks the
server for errors only, from its start-up packet on, whatever the database's or
the operator's own settings say."""

from __future__ import annotations

import psycopg

from sendwarden.consent.postgres import quiet_conninfo
from sendwarden.consent.store import open_consent_store
from tests.support.postgres import PostgresServer


def chatty_database(server: PostgresServer) -> str:
    """A database whose default is to send the client every DEBUG message."""
    url = server.new_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET client_min_messages = debug5')
    return url


def notices_seen(conninfo: str) -> list[str]:
    seen: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: seen.append(str(diag.message_primary)))
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")  # NOTICE: already exists
    return seen


def test_a_quiet_connection_gets_no_notice_from_a_chatty_database(
    postgres_server: PostgresServer,
) -> None:
    url = chatty_database(postgres_server)
    assert notices_seen(url)  # the database does chat
    assert notices_seen(quiet_conninfo(url)) == []


def test_the_operators_own_options_are_kept(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_schema()  # options=-csearch_path=...
    quiet = quiet_conninfo(url)
    with psycopg.connect(quiet) as conn:
        search_path = conn.execute("SHOW search_path").fetchone()
        level = conn.execute("SHOW client_min_messages").fetchone()
    assert search_path is not None and search_path[0] == url.rsplit("%3D", 1)[1]
    assert level == ("error",)


def test_the_store_opens_and_migrates_a_chatty_database_quietly(
    postgres_server: PostgresServer,
) -> None:
    url = chatty_database(postgres_server)
    for _ in range(2):  # the second open meets CREATE TABLE IF NOT EXISTS notices
        store = open_consent_store(url)
        assert store.consenting("acme", ["a@example.net"]) == set()
        store.close()
