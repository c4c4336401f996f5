"""Integration fixtures: real databases started for the test run.

``consent_store`` (and ``consent_database_url``) are parametrized over SQLite and a
private PostgreSQL, so every consent test runs against both backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sendwarden.consent.model import ConsentStore
from sendwarden.consent.store import open_consent_store
from tests.support.mariadb import MariaDBError, MariaDBServer, find_mariadbd
from tests.support.postgres import PostgresError, PostgresServer, find_bindir
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the whole run (initdb takes seconds; databases don't)."""
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt install postgresql)")
    server = PostgresServer()
    try:
        server.start()
    except PostgresError:
        server.close()
        raise
    yield server
    server.close()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One private MariaDB for the whole run (its system tables take seconds to make)."""
    if find_mariadbd() is None:
        pytest.skip("MariaDB server binaries are not installed (apt install mariadb-server)")
    server = MariaDBServer()
    try:
        server.start()
    except MariaDBError:
        server.close()
        raise
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def consent_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty consent database, one per test, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'consent.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_schema()
    yield url
    server.drop_schema(url)


@pytest.fixture
def consent_store(consent_database_url: str) -> Iterator[ConsentStore]:
    """An open, migrated, empty consent ledger."""
    store = open_consent_store(consent_database_url, timeout_ms=5000)
    yield store
    store.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test's Redis (modules may define their own ``client``)."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()
