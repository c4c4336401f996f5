"""Suspensions survive an empty Redis restart (issue 13, item 4): they are kept with
their history (who, when, why, lifted by whom) in the durable database, SQLite and
PostgreSQL, and Redis only caches them. Real Redis, real databases, the real
pipeline and CLI; the fault is a Redis restarted with nothing in it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendwarden.cli import main
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.runtime import build_checks
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import suspension_store_from_settings
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import dumps_toml

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)


def config(redis_url: str, database: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "timeout_ms": 500},
        "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": 2},
        "ratelimit": {"suspend_after": 1, "suspend_period": "1h"},
        "consent": {"database": database},
        "accounts": [
            {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]},
            {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
        ],
    }


@pytest.fixture
def setup(
    redis_server: RedisServer, consent_database_url: str, tmp_path: Path
) -> Iterator[tuple[Settings, Path, redis.Redis]]:
    document = config(redis_server.url, consent_database_url)
    path = tmp_path / "sendwarden.toml"
    path.write_text(dumps_toml(document))
    settings = settings_from_mapping(document)
    client = connect(settings.redis)
    yield settings, path, client
    client.close()


def empty_restart(server: RedisServer) -> None:
    """Redis comes back with nothing in it (no persistence, a new machine...)."""
    server.stop()
    server.start()
    assert server.command("DBSIZE") == b":0\r\n"


def first_reply(pipeline: Pipeline, login: str, recipients: int = 1) -> str:
    txn = pipeline.begin(REMOTE, login=login, mail_from=login)
    mail = pipeline.mail(txn)
    if mail.is_final:
        return mail.reply()
    replies = [pipeline.rcpt(txn, f"r{n}@example.net").reply() for n in range(recipients)]
    pipeline.header(txn, "From", login)
    eom = pipeline.eom(txn).reply()
    return next((reply for reply in [*replies, eom] if reply), "")


def test_staff_suspensions_and_history_survive_an_empty_redis_restart(
    setup: tuple[Settings, Path, redis.Redis],
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, path, client = setup
    cli = ["-c", str(path)]
    assert main(["account", "suspend", "acme", "--by", "carol", "--reason", "spam run", *cli]) == 0
    assert "suspended by carol (spam run)" in capsys.readouterr().out
    empty_restart(redis_server)

    pipeline = Pipeline(settings, build_checks(settings, client))
    refused = first_reply(pipeline, "alice@acme.example")
    assert refused.startswith("550 5.7.1 Account acme is suspended"), refused
    assert "spam run" in refused
    assert first_reply(pipeline, "bob@globex.example") == ""  # others unaffected

    assert main(["account", "unsuspend", "acme", "--by", "dave", "--reason", "cleaned", *cli]) == 0
    assert "suspension lifted by dave" in capsys.readouterr().out
    empty_restart(redis_server)
    assert first_reply(pipeline, "alice@acme.example") == ""  # lifted stays lifted

    assert main(["account", "show", "acme", *cli]) == 0
    out = capsys.readouterr().out
    assert "account acme: active" in out
    assert "suspended by carol: spam run" in out
    assert "lifted by dave: cleaned" in out
    history = suspension_store_from_settings(settings, client).history("acme")
    assert [(e.action, e.by, e.reason) for e in history] == [
        ("suspended", "carol", "spam run"),
        ("lifted", "dave", "cleaned"),
    ]
    pipeline.close()


def test_an_automatic_suspension_is_recorded_and_survives_an_empty_restart(
    setup: tuple[Settings, Path, redis.Redis], redis_server: RedisServer
) -> None:
    settings, _, client = setup
    pipeline = Pipeline(settings, build_checks(settings, client))
    assert first_reply(pipeline, "alice@acme.example", 2) == ""
    refused = first_reply(pipeline, "alice@acme.example", 1)  # over 2/hour: strike 1 suspends
    assert "now suspended" in refused, refused
    empty_restart(redis_server)  # the counts are gone; the suspension is not
    assert first_reply(pipeline, "alice@acme.example").startswith("550 5.7.1 Account acme")
    history = suspension_store_from_settings(settings, client).history("acme")
    assert [(e.action, e.by) for e in history] == [("suspended", "sendwarden rate limit")]
    pipeline.close()


def test_unsuspending_an_active_account_records_nothing(
    setup: tuple[Settings, Path, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, path, client = setup
    assert main(["account", "unsuspend", "globex", "--by", "erin", "-c", str(path)]) == 0
    assert "was not suspended" in capsys.readouterr().out
    assert suspension_store_from_settings(settings, client).history("globex") == []


def test_an_automatic_suspension_the_database_missed_is_recorded_later(
    redis_server: RedisServer,
    consent_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sendwarden.consent.store import open_consent_store
    from sendwarden.policy.suspension import Suspension
    from sendwarden.store import StoreError
    from sendwarden.store import suspensions as module
    from sendwarden.store.suspensions import (
        DurableSuspensionStore,
        RedisSuspensionStore,
        SuspensionRecords,
    )

    database = open_consent_store(consent_database_url)
    down = [True]

    def reach() -> object:
        if down[0]:
            raise StoreError("consent database", "connection refused")
        return database

    client = connect(settings_from_mapping(config(redis_server.url, consent_database_url)).redis)
    store = DurableSuspensionStore(RedisSuspensionStore(client), SuspensionRecords(reach))  # type: ignore[arg-type]
    suspension = Suspension(reason="over the limit", since="2026-12-01T10:00:00Z", by="rate")
    store.cache.suspend("acme", suspension)  # what the rate-limit script does
    store.recorded_automatically("acme", suspension)
    assert "not yet recorded durably" in caplog.text
    down[0] = False
    assert store.get("acme") == suspension  # too soon to retry: no database call
    assert store.history("acme") == []
    monkeypatch.setattr(module.time, "monotonic", lambda: 10**9)  # later
    assert store.get("acme") == suspension
    assert [(e.action, e.by) for e in store.history("acme")] == [("suspended", "rate")]
    client.close()
    database.close()
