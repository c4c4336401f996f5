"""The consent database under faults (issue 13, item 5), on real servers.

* A SIGSTOPped PostgreSQL: every query (on an open connection or a new one) ends
  within ``consent.timeout_ms`` on the client's side, while the server is still
  stopped; the server's own timeouts cannot fire.
* Health per backend: one PostgreSQL outage is one unavailable/available pair in
  the log, however much Redis-only mail passes during it.
* SQLite behind a held write lock: opening the ledger reads, it does not queue
  messages one behind another for the lock.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendwarden.config import Settings, settings_from_mapping
from sendwarden.consent.store import open_consent_store
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.runtime import build_checks
from sendwarden.store import StoreError
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import SharedDatabase
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
TIMEOUT_MS = 300
PAUSE_LIMIT = 15.0  # the server stays stopped at most this long, whatever happens


@pytest.fixture
def paused_later(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    try:
        yield postgres_server
    finally:
        postgres_server.resume()


def outcome_while_paused(server: PostgresServer, call: Any) -> tuple[str, float]:
    """Run ``call`` in a thread with the server stopped; what it did and how long it
    took. The server is resumed only after the call returned (or PAUSE_LIMIT)."""
    result: list[str] = []
    started = time.monotonic()

    def run() -> None:
        try:
            call()
            result.append("answered")
        except StoreError as error:
            result.append(f"StoreError: {error}")

    server.pause()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(PAUSE_LIMIT)
    elapsed = time.monotonic() - started
    returned_while_paused = not thread.is_alive()
    server.resume()
    thread.join()
    assert returned_while_paused, f"the call waited for the stopped server ({elapsed:.1f}s)"
    return result[0], elapsed


def test_a_stopped_postgresql_cannot_hang_a_consent_query(paused_later: PostgresServer) -> None:
    server = paused_later
    url = server.new_schema()
    store = open_consent_store(url, timeout_ms=TIMEOUT_MS)
    try:
        assert store.consenting("acme", ["a@example.net"]) == set()  # a pooled connection
        # on the open connection
        outcome, first = outcome_while_paused(
            server, lambda: store.consenting("acme", ["a@example.net"])
        )
        assert outcome.startswith("StoreError") and "no answer within 300 ms" in outcome
        # on a new connection (the failed one was discarded)
        outcome, second = outcome_while_paused(
            server, lambda: store.consenting("acme", ["b@example.net"])
        )
        assert outcome.startswith("StoreError"), outcome
        print(f"SIGSTOPped PostgreSQL: query ended after {first:.2f}s, connect after {second:.2f}s")
        assert store.consenting("acme", ["c@example.net"]) == set()  # back once resumed
    finally:
        store.close()
        server.drop_schema(url)


def bulk_config(redis_url: str, database: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "timeout_ms": 1000},
        "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": 100_000},
        "consent": {"database": database, "timeout_ms": TIMEOUT_MS},
        "accounts": [{"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]}],
    }


def send(pipeline: Pipeline, recipients: int) -> str:
    """One message from acme (a newsletter when to several); the final reply."""
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="news@acme.example")
    pipeline.mail(txn)
    for n in range(recipients):
        pipeline.rcpt(txn, f"reader{n}@readers.example")
    pipeline.header(txn, "From", "news@acme.example")
    if recipients > 1:  # a newsletter
        pipeline.header(txn, "List-Unsubscribe", "<https://acme.example/unsubscribe/abc>")
        pipeline.header(txn, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    return pipeline.eom(txn).reply()


def test_one_postgresql_outage_is_one_pair_of_log_lines(
    paused_later: PostgresServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = paused_later
    url = server.new_schema()
    settings: Settings = settings_from_mapping(bulk_config(redis_server.url, url))
    client: redis.Redis = connect(settings.redis)
    pipeline = Pipeline(settings, build_checks(settings, client))
    try:
        assert send(pipeline, 60).startswith("550")  # bulk, no consent: the database answers
        caplog.set_level(logging.WARNING, logger="sendwarden.pipeline")
        server.pause()
        try:
            replies = []
            for _ in range(4):  # bulk mail (needs the database) and personal mail (Redis)
                replies.append(send(pipeline, 60))
                replies.append(send(pipeline, 1))
        finally:
            server.resume()
        bulk, personal = replies[0::2], replies[1::2]
        assert all(r.startswith("451 4.3.0") for r in bulk), bulk
        assert personal == [""] * 4, personal
        assert send(pipeline, 60).startswith("550")  # answered again
        messages = [record.getMessage() for record in caplog.records]
        down = [m for m in messages if "consent database is unavailable" in m]
        up = [m for m in messages if "consent database is available again" in m]
        print(f"PostgreSQL paused: bulk tempfailed={len(bulk)} personal accepted={len(personal)}")
        assert (len(down), len(up)) == (1, 1), messages
    finally:
        pipeline.close()
        client.close()
        server.drop_schema(url)


def test_opening_sqlite_behind_a_write_lock_does_not_queue_messages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'consent.db'}"
    open_consent_store(url).close()  # created and migrated
    settings = settings_from_mapping(bulk_config("redis://127.0.0.1:1/0", url))
    writer = sqlite3.connect(tmp_path / "consent.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # an import holds the write lock meanwhile
    database = SharedDatabase(settings)
    outcomes: list[str] = []
    lock = threading.Lock()

    def message() -> None:
        try:
            database().consenting("acme", ["a@example.net"])
            outcome = "answered"
        except StoreError as error:
            outcome = str(error)
        with lock:
            outcomes.append(outcome)

    try:
        senders = [threading.Thread(target=message) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
        assert outcomes == ["answered"] * 4  # while the writer still holds its lock
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        database.close()
