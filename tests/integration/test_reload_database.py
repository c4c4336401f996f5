"""A reload carries the open consent database over to the new configuration.

Before, every SIGHUP dropped the database pool: the first bulk message of the new
configuration had to open a new connection (and check the schema) while the
messages behind it waited, each for at most ``consent.timeout_ms``; on a loaded
host that wait could tempfail mail although the database was up. Now a
configuration naming the same database shares the running one's pool, and the
pool is closed when the last configuration using it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sendwarden.config import Settings, settings_from_mapping
from sendwarden.consent.model import EventKind
from sendwarden.consent.store import open_consent_store
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.store import StoreError
from sendwarden.store.suspensions import SharedDatabase
from tests.e2e.scenarios import record_consent
from tests.integration.test_consent_faults import bulk_config, send
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer

READERS = [f"reader{n}@readers.example" for n in range(60)]


def sqlite_settings(path: Path, timeout_ms: int = 1000) -> Settings:
    config = bulk_config("redis://127.0.0.1:1/0", f"sqlite:///{path}")
    config["consent"]["timeout_ms"] = timeout_ms
    return settings_from_mapping(config)


def test_a_configuration_naming_the_same_database_shares_its_pool(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "consent.db")
    running = SharedDatabase(settings)
    store = running()
    reloaded = SharedDatabase(settings, running)
    assert reloaded() is store  # opened nothing
    running.close()
    running.close()  # every check of a configuration gives it back: counted once
    assert store.consenting("acme", ["a@example.net"]) == set()  # still open
    moved = SharedDatabase(sqlite_settings(tmp_path / "other.db"), reloaded)
    slower = SharedDatabase(sqlite_settings(tmp_path / "consent.db", 5000), reloaded)
    try:
        assert moved() is not store and slower() is not store  # another database, timeout
        reloaded.close()  # the last configuration using it
        with pytest.raises(StoreError, match="closed"):
            store.consenting("acme", ["a@example.net"])
    finally:
        moved.close()
        slower.close()


@pytest.fixture
def ledger_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A PostgreSQL database where acme's readers opted in; always accepting
    connections again at the end."""
    url = postgres_server.new_database()
    ledger = open_consent_store(url)
    try:
        record_consent(ledger, EventKind.GRANTED, READERS)
    finally:
        ledger.close()
    yield url
    accept_connections(postgres_server, url, True)


def accept_connections(server: PostgresServer, url: str, accept: bool) -> None:
    """Whether the database takes new connections (open ones stay as they are)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(accept).lower()}')


@pytest.mark.postgres
def test_a_reload_needs_no_new_database_connection(
    postgres_server: PostgresServer, redis_server: RedisServer, ledger_url: str
) -> None:
    """The first bulk message after a reload is decided on the connections the
    running configuration opened: with new connections refused, it is still accepted
    (before, it was a 451 4.3.0: the new configuration connected anew)."""
    config = bulk_config(redis_server.url, ledger_url)
    runtimes: list[Runtime] = [build_runtime(settings_from_mapping(config))]
    try:
        assert send(runtimes[0].pipeline, 60) == ""  # consent on record; the pool is open
        accept_connections(postgres_server, ledger_url, False)
        runtimes.append(build_runtime(settings_from_mapping(config), runtimes[0]))  # SIGHUP
        runtimes.pop(0).close()  # the old configuration's last connection ended
        assert send(runtimes[0].pipeline, 60) == ""
        assert send(runtimes[0].pipeline, 60) == ""
    finally:
        for runtime in runtimes:
            runtime.close()
