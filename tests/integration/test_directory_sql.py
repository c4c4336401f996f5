"""The SQL source against real databases: SQLite, a private PostgreSQL and a private
MariaDB; and the Plesk example of docs/directory.md against Plesk's tables on MariaDB."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.config import settings_from_mapping
from sendwarden.directory import sql
from sendwarden.directory.explain import open_directory
from sendwarden.directory.snapshot import Snapshot, write_snapshot
from sendwarden.directory.sources import SourceError
from sendwarden.directory.sql import read_sql, start_sql
from tests.support.mariadb import MariaDBServer
from tests.support.postgres import PostgresServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "directory.md"
ROWS = [
    ("acme", "acme.example", None, 1000, 1),
    ("acme", "shop.example", "ftp-acme", None, None),
    ("globex", "globex.example", None, None, 0),
    ("globex", None, "bob@partner.example", 50, None),
    ("ünicode-free", "bücher.example", None, None, None),
]
QUERY = (
    "SELECT account, domain, login, recipients_per_hour, allow_subdomains FROM directory ORDER BY n"
)
CREATE = (
    "CREATE TABLE directory (n INTEGER PRIMARY KEY, account VARCHAR(64) NOT NULL, "
    "domain VARCHAR(255), login VARCHAR(255), recipients_per_hour INTEGER, "
    "allow_subdomains INTEGER)"
)
INSERT = "INSERT INTO directory VALUES (%s, %s, %s, %s, %s, %s)"
Table = Callable[[list[tuple[object, ...]]], str]


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Table]:
    """Makes the ``directory`` table holding the given rows; returns its sql_url."""
    cleanup: list[Callable[[], None]] = []

    def make(rows: list[tuple[object, ...]]) -> str:
        numbered = [(n, *row) for n, row in enumerate(rows, start=1)]
        if request.param == "sqlite":
            path = tmp_path / "panel.db"
            with sqlite3.connect(path) as connection:
                connection.execute(CREATE)
                connection.executemany(INSERT.replace("%s", "?"), numbered)
            return f"sqlite:///{path}"
        if request.param == "postgresql":
            pg: PostgresServer = request.getfixturevalue("postgres_server")
            url = pg.new_schema()
            cleanup.append(lambda: pg.drop_schema(url))
            with psycopg.connect(url) as connection:
                connection.execute(CREATE)
                connection.cursor().executemany(INSERT, numbered)
            return url
        maria: MariaDBServer = request.getfixturevalue("mariadb_server")
        database = maria.new_database()
        cleanup.append(lambda: maria.drop_database(database))
        maria.execute(CREATE, database)
        connection = maria.connect(database)
        with connection.cursor() as cursor:
            cursor.executemany(INSERT, numbered)
        connection.close()
        return maria.url(database)

    yield make
    for step in cleanup:
        step()


@pytest.mark.parametrize("bad_row", [False, True])
@pytest.mark.parametrize(
    "query", [QUERY, "SELECT account, domian FROM directory", "SELEKT nothing", " ", "bad url"]
)
def test_a_query_sent_early_reads_as_one_sent_when_read(
    table: Table, query: str, bad_row: bool
) -> None:
    """The builder child sends its query before its slow imports (start_sql): the rows,
    or the error naming the bad ones, are read_sql's, and raised only when read."""
    url = table(list(ROWS) + ([("{acme}", "x.example", None, None, None)] if bad_row else []))
    fails = bad_row or query != QUERY
    if query == "bad url":
        url, query = "oracle://x/y", QUERY

    def outcome(read: Callable[[], object]) -> object:
        try:
            data = read()
        except (SourceError, ValueError) as error:
            return type(error), str(error)
        return dataclasses.astuple(data)  # type: ignore[call-overload]

    early = start_sql(url, query)  # nothing raised yet, whatever is wrong
    assert outcome(early) == outcome(lambda: read_sql(url, query))
    assert (outcome(early)[0] in (SourceError, ValueError)) == fails  # type: ignore[index]


def test_rows_become_accounts_with_domains_logins_and_settings(table: Table) -> None:
    url = table(list(ROWS))
    data = read_sql(url, QUERY)
    assert data.domains == [
        ("acme.example", "acme", 1),
        ("shop.example", "acme", 2),
        ("globex.example", "globex", 3),
        ("xn--bcher-kva.example", "ünicode-free", 5),
    ]
    assert data.logins == [("ftp-acme", "acme", 2), ("bob@partner.example", "globex", 4)]
    assert data.limits == {"acme": 1000, "globex": 50}
    assert data.allow_subdomains == {"acme": True, "globex": False}


def test_the_directory_built_from_sql_attributes(table: Table) -> None:
    url = table(list(ROWS))
    settings = settings_from_mapping(
        {
            "directory": {"sql_url": url, "sql_query": QUERY},
            "accounts": [{"id": "globex", "recipients_per_hour": 75}],
        }
    )
    with open_directory(settings) as directory:
        accounts = directory.accounts
        acme = accounts.by_login("info@shop.example")
        assert acme is not None and acme.id == "acme" and acme.recipients_per_hour == 1000
        assert acme.allow_subdomains is True
        globex = accounts.by_login("BOB@partner.example")
        assert globex is not None and globex.recipients_per_hour == 75  # the override wins
        assert accounts.owner_of_domain("www.bücher.example".encode("idna").decode()) is not None


def test_a_bad_row_keeps_nothing_and_names_the_row(table: Table) -> None:
    url = table([*ROWS, ("broken", "not a domain", None, None, None)])
    with pytest.raises(SourceError, match="row 6"):
        read_sql(url, QUERY)


def test_a_failing_query_is_a_source_error(table: Table) -> None:
    url = table(list(ROWS))
    with pytest.raises(SourceError) as error:
        read_sql(url, "SELECT account, nonsense FROM directory")
    assert "sql" in str(error.value)


def test_an_unreachable_database_is_a_source_error() -> None:
    with pytest.raises(SourceError, match=re.escape("sql mysql://nobody@127.0.0.1:1/psa")):
        read_sql("mysql://nobody@127.0.0.1:1/psa", QUERY, timeout_ms=2000)
    with pytest.raises(SourceError, match=re.escape("sql postgresql://nobody@127.0.0.1:1/x")):
        read_sql("postgresql://nobody@127.0.0.1:1/x", QUERY, timeout_ms=2000)


# -- Plesk's psa on MariaDB ------------------------------------------------------------

PSA_SCHEMA = """
CREATE TABLE clients (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    login VARCHAR(20) CHARACTER SET utf8 NOT NULL DEFAULT '', status BIGINT NOT NULL DEFAULT 0);
CREATE TABLE domains (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) CHARACTER SET ascii NOT NULL, cl_id INT UNSIGNED NOT NULL,
    webspace_id INT UNSIGNED NOT NULL DEFAULT 0);
CREATE TABLE sys_users (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    login VARCHAR(255) CHARACTER SET utf8 NOT NULL, home VARCHAR(255) NOT NULL DEFAULT '');
CREATE TABLE hosting (dom_id INT UNSIGNED NOT NULL PRIMARY KEY,
    sys_user_id INT UNSIGNED NOT NULL);
CREATE TABLE mail (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mail_name VARCHAR(245) CHARACTER SET ascii NOT NULL, dom_id INT UNSIGNED NOT NULL,
    postbox ENUM('false','true') NOT NULL DEFAULT 'false');
INSERT INTO clients (id, login) VALUES (1, 'acmecorp'), (2, 'globex');
INSERT INTO domains (id, name, cl_id) VALUES (1, 'acme.example', 1), (2, 'acme-shop.example', 1),
    (3, 'globex.example', 2);
INSERT INTO sys_users (id, login) VALUES (10, 'acme_web'), (11, 'globex_sys');
INSERT INTO hosting (dom_id, sys_user_id) VALUES (1, 10), (2, 10), (3, 11);
INSERT INTO mail (mail_name, dom_id, postbox) VALUES ('info', 1, 'true'), ('bob', 3, 'true')
"""


def plesk_query() -> str:
    """The query docs/directory.md gives for Plesk, as written there."""
    section = DOCS.read_text().split("## Plesk", 1)[1]
    match = re.search(r'sql_query = """\n(.*?)"""', section, re.DOTALL)
    assert match, "docs/directory.md has no Plesk sql_query"
    return match.group(1)


@pytest.mark.mariadb
def test_the_documented_plesk_query_on_psa(mariadb_server: MariaDBServer, tmp_path: Path) -> None:
    database = mariadb_server.new_database("psa")
    try:
        mariadb_server.execute(PSA_SCHEMA, database)
        # A read-only user whose password is kept in a file, as the docs set it up.
        mariadb_server.execute(
            f"CREATE USER 'sw_{database[-8:]}'@'127.0.0.1' IDENTIFIED BY 's3cret';\n"
            f"GRANT SELECT ON `{database}`.* TO 'sw_{database[-8:]}'@'127.0.0.1'"
        )
        password_file = tmp_path / "psa.password"
        password_file.write_text("s3cret\n")
        url = mariadb_server.url(database, user=f"sw_{database[-8:]}")
        data = read_sql(url, plesk_query(), password=password_file.read_text().strip())
        assert sorted(d[:2] for d in data.domains) == [
            ("acme-shop.example", "acmecorp"),
            ("acme.example", "acmecorp"),
            ("globex.example", "globex"),
        ]
        write_snapshot(
            tmp_path / "s.db", [data], system_users={2001: "acme_web", 2002: "globex_sys"}
        )
        snapshot = Snapshot(tmp_path / "s.db")
        assert snapshot.owner("uid", 2001) == "acmecorp"  # PHP mail() as the subscription
        assert snapshot.owner("uid", 2002) == "globex"
        assert snapshot.owner("domain", "acme-shop.example") == "acmecorp"
        snapshot.close()
        with pytest.raises(SourceError, match="Access denied"):
            read_sql(url, plesk_query(), password="wrong")
    finally:
        mariadb_server.drop_database(database)


TEXTS = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=6),
)
MOODS = st.one_of(st.none(), st.sampled_from(["ok", "sad"]))


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    login_type=st.sampled_from(["text", "varchar(40)", "mood", "integer"]),
    query=st.sampled_from(
        [
            "SELECT account, domain, login FROM directory ORDER BY n",
            "SELECT login, account FROM directory WHERE n > 1 ORDER BY n DESC",
            "SELECT account, domain AS login, domain FROM directory ORDER BY n;",
        ]
    ),
)
def test_postgresql_rows_read_as_arrays_are_the_rows(
    postgres_server: PostgresServer, data: st.DataObject, login_type: str, query: str
) -> None:
    """A PostgreSQL result of text columns is read as one array per column: the same
    values, in the same order, as the rows one by one (other types, and anything the
    arrays' query refuses, are read as rows); and the claims read from them alike."""
    login = {"mood": MOODS, "integer": st.one_of(st.none(), st.integers(-5, 5))}.get(
        login_type, TEXTS
    )
    rows = data.draw(st.lists(st.tuples(TEXTS, TEXTS, login), max_size=8))
    url = postgres_server.new_schema()
    try:
        with psycopg.connect(url) as connection:
            connection.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
            connection.execute(
                "CREATE TABLE directory (n INTEGER PRIMARY KEY, account TEXT, "
                f"domain VARCHAR(255), login {login_type})"
            )
            connection.cursor().executemany(
                "INSERT INTO directory VALUES (%s, %s, %s, %s)",
                [(n, *row) for n, row in enumerate(rows, start=1)],
            )
        names, read = sql._postgresql(url, query, None, 30000)
        expected_names, expected = sql._fetch_all(psycopg.connect(url), query)
        assert names == expected_names
        as_rows = read.rows() if isinstance(read, sql.Columns) else read
        assert [tuple(row) for row in as_rows] == [tuple(row) for row in expected]
        all_text = login_type in ("text", "varchar(40)") or "domain AS login" in query
        assert isinstance(read, sql.Columns) == all_text

        def claims(result: object) -> object:
            try:
                return dataclasses.astuple(sql.rows_to_data("sql", names, result))  # type: ignore[arg-type]
            except SourceError as error:
                return str(error)

        assert claims(read) == claims(expected)
    finally:
        postgres_server.drop_schema(url)
