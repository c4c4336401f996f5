"""Refusal counts for risk alerts on a real Redis: the store's rolling hour, the
recorder inside the runtime's pipeline, and a Redis outage that must not touch mail."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendwarden.alerts.risk import RiskStore, account_risks, risk_findings
from sendwarden.config import settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.policy.suspension import Suspension
from sendwarden.ratelimit.window import MICROSECONDS
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.clock import ManualClock
from tests.support.redis_server import RedisServer

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
START = 1_714_557_600 * MICROSECONDS  # 2024-05-01T10:00:00Z, on a minute boundary
MINUTE = 60 * MICROSECONDS


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    yield client
    client.close()


# -- the store ----------------------------------------------------------------------


def test_record_read_and_reset(client: redis.Redis) -> None:
    store = RiskStore(client, "sw")
    store.record("acme", "recipient-rate")
    store.record("acme", "recipient-rate", 3)
    store.record("acme", "bulk-consent")
    store.record("globex", "forged-sender")
    assert store.refusals(["acme", "globex", "initech"]) == {
        "acme": {"recipient-rate": 4, "bulk-consent": 1},
        "globex": {"forged-sender": 1},
    }
    assert store.refusals([]) == {}
    assert client.exists("sw:{acme}:risk")  # one hash per account, under its hash tag
    assert 0 < client.pttl("sw:{acme}:risk") <= 3660 * 1000
    store.reset("acme")
    assert store.refusals(["acme", "globex"]) == {"globex": {"forged-sender": 1}}


def test_refusals_leave_the_count_after_an_hour(client: redis.Redis) -> None:
    clock = ManualClock(START)
    store = RiskStore(client, "sw", clock=clock)
    store.record("acme", "forged-sender", 2)
    clock.now += 30 * MINUTE
    store.record("acme", "forged-sender")
    store.record("acme", "bulk-unsubscribe")
    clock.now += 30 * MINUTE  # the first bucket still overlaps the hour: counted whole
    assert store.refusals(["acme"]) == {"acme": {"forged-sender": 3, "bulk-unsubscribe": 1}}
    clock.now += 2 * MINUTE  # now it has left the window
    assert store.refusals(["acme"]) == {"acme": {"forged-sender": 1, "bulk-unsubscribe": 1}}
    clock.now += 60 * MINUTE
    assert store.refusals(["acme"]) == {}
    store.record("acme", "impersonation")  # a new bucket drops the expired ones
    assert client.hkeys("sw:{acme}:risk") == [f"{(clock.now // MINUTE)}:impersonation".encode()]


def test_account_risks_with_suspensions_become_findings(client: redis.Redis) -> None:
    store = RiskStore(client, "sw")
    suspensions = RedisSuspensionStore(client, "sw")
    for _ in range(3):
        store.record("acme", "bulk-consent")
    suspensions.suspend("globex", Suspension("over the limit", "2024-05-01T10:00:00Z", "staff"))
    risks = account_risks(store, suspensions, ["initech", "acme", "globex"])
    assert [(risk.account, dict(risk.refusals), risk.suspension) for risk in risks] == [
        ("initech", {}, None),
        ("acme", {"bulk-consent": 3}, None),
        ("globex", {}, Suspension("over the limit", "2024-05-01T10:00:00Z", "staff")),
    ]
    keys = [finding.key for finding in risk_findings(risks, threshold=3)]
    assert keys == ["risk:acme", "suspended:globex"]


# -- the recorder in the runtime's pipeline -------------------------------------------


def settings_for(url: str, tmp_path: Path, **policy: Any) -> Any:
    return settings_from_mapping(
        {
            "redis": {"url": url, "timeout_ms": 300},
            "policy": {
                "local_domains": ["hosting.example"],
                "trusted_networks": ["127.0.0.1/32"],
                "recipients_per_hour": 3,
                **policy,
            },
            "consent": {"database": f"sqlite:///{tmp_path / 'consent.db'}"},
            "accounts": [
                {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]}
            ],
        }
    )


@pytest.fixture
def runtime(redis_server: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    runtime = build_runtime(settings_for(redis_server.url, tmp_path))
    yield runtime
    runtime.close()


def send(pipeline: Pipeline, recipients: list[str], from_header: str) -> list[str]:
    """One logged-in SMTP transaction: each RCPT reply and the end-of-message reply."""
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    mail = pipeline.mail(txn)
    if mail.is_final:
        return [mail.reply()]
    replies = [pipeline.rcpt(txn, recipient).reply() for recipient in recipients]
    pipeline.header(txn, "From", from_header)
    pipeline.header(txn, "Subject", "hello")
    replies.append(pipeline.eom(txn).reply())
    return replies


def test_refusals_over_the_recipient_limit_are_counted(
    runtime: Runtime, redis_server: RedisServer
) -> None:
    store = RiskStore(runtime.redis, runtime.settings.redis.key_prefix)
    accepted = send(runtime.pipeline, ["a@x.example", "b@x.example"], "alice@acme.example")
    assert accepted == ["", "", ""]
    assert store.refusals(["acme"]) == {}  # accepted mail records nothing
    replies = send(
        runtime.pipeline, [f"r{i}@x.example" for i in range(4)], "Alice <alice@acme.example>"
    )
    assert replies[0] == "" and all(reply.startswith("451 4.7.1") for reply in replies[1:4])
    assert store.refusals(["acme"]) == {"acme": {"recipient-rate": 3}}


def test_a_forged_from_is_counted_at_end_of_message(runtime: Runtime) -> None:
    store = RiskStore(runtime.redis, runtime.settings.redis.key_prefix)
    replies = send(runtime.pipeline, ["a@x.example"], "ceo@bank.example")
    assert replies[-1].startswith("550 5.7.1")
    assert store.refusals(["acme"]) == {"acme": {"forged-sender": 1}}


def test_redis_outage_leaves_mail_decisions_alone_and_logs_once(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = build_runtime(settings_for(redis_server.url, tmp_path, on_store_error="accept"))
    caplog.set_level(logging.WARNING, logger="sendwarden.alerts.risk")
    try:
        redis_server.stop()
        try:
            for _ in range(3):
                replies = send(runtime.pipeline, ["a@x.example"], "ceo@bank.example")
                assert replies[-1].startswith("550 5.7.1"), replies  # still refused, no error
        finally:
            redis_server.start()
        assert send(runtime.pipeline, ["a@x.example"], "ceo@bank.example")[-1].startswith("550")
        store = RiskStore(runtime.redis, runtime.settings.redis.key_prefix)
        assert store.refusals(["acme"]) == {"acme": {"forged-sender": 1}}
    finally:
        runtime.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "sendwarden.alerts.risk"]
    assert len(messages) == 2, messages
    assert "redis is unavailable" in messages[0] and "not counted" in messages[0]
    assert "redis is available again" in messages[1]
