"""A reload hands the open store connections on to the new configuration.

Before, every SIGHUP dropped them: the first messages of the new configuration had
to connect to Redis again (a connection costs round trips of its own before the
first script) and to the consent database (a new connection and a schema check,
while the bulk messages behind it waited, each for at most ``consent.timeout_ms``);
on a loaded host those waits could tempfail mail although both stores were up. Now
a configuration naming the same store (URL and timeout) shares the running one's
client and pool, closed when the last configuration using them is.
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
from tests.integration.test_round_trips import round_trips
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


def test_a_message_after_a_reload_opens_no_new_redis_connection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its Redis round trips are those of the same message before the reload (before
    this change, two more: the handshake of a new connection)."""
    config = bulk_config(redis_server.url, f"sqlite:///{tmp_path / 'consent.db'}")
    runtimes: list[Runtime] = [build_runtime(settings_from_mapping(config))]
    try:
        assert send(runtimes[0].pipeline, 1) == ""  # the connections are open
        before = round_trips(redis_server, lambda: send(runtimes[0].pipeline, 1))
        runtimes.append(build_runtime(settings_from_mapping(config), runtimes[0]))  # SIGHUP
        after = round_trips(redis_server, lambda: send(runtimes[1].pipeline, 1))
        assert after == before == 2
        runtimes.pop(0).close()  # the old configuration's last connection ended
        assert round_trips(redis_server, lambda: send(runtimes[0].pipeline, 1)) == 2
    finally:
        for runtime in runtimes:
            runtime.close()
