"""Bulk enforcement against real stores: the distinct-recipient counter on a real Redis,
and the consent check over a real ledger (SQLite and PostgreSQL) through the pipeline."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import redis

from sendwarden.config import RedisSettings, Settings, settings_from_mapping
from sendwarden.consent.bulk import BUCKET_TTL_SECONDS, RecentRecipients
from sendwarden.consent.check import ConsentCheck
from sendwarden.consent.model import ConsentStore, EventKind, NewEvent
from sendwarden.pipeline import Pipeline
from sendwarden.policy.consent import REMOVED_HEADER
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.store import StoreError
from sendwarden.store.redis import connect
from tests.support.clock import ManualClock
from tests.support.redis_server import RedisServer

CLIENT = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=1)
UNSUBSCRIBE = ("List-Unsubscribe", "<mailto:leave@acme.example>")
SIGNED_UP = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = connect(RedisSettings(url=redis_server.url, timeout_ms=1000))
    yield connection
    connection.close()


def people(count: int, domain: str = "example.org") -> list[str]:
    return [f"p{index}@{domain}" for index in range(count)]


def test_counts_distinct_recipients_in_the_rolling_hour(client: redis.Redis) -> None:
    clock = ManualClock(1_800_000_000.0)
    recent = RecentRecipients(client, "sw", clock)
    recent.add("acme", people(30))
    clock.now += 20 * 60
    recent.add("acme", people(50)[20:])  # p20..p49: ten again, so 50 different ones
    recent.add("globex", people(5, "other.example"))
    assert recent.count("acme") == 50
    assert recent.count("globex") == 5
    clock.now += 41 * 60  # the first minute's bucket has left the window
    recent.add("acme", ["new@example.org"])
    assert recent.count("acme") == 31  # p20..p49 and the new one
    clock.now += 60 * 60
    assert recent.count("acme") == 0


def test_keys_share_the_accounts_hash_tag_and_expire(client: redis.Redis) -> None:
    recent = RecentRecipients(client, "sw", ManualClock(1_800_000_000.0))
    recent.add("acme", people(3))
    (key,) = client.keys("*")
    assert key.startswith(b"sw:{acme}:rcpt-hll:")
    assert 0 < client.ttl(key) <= BUCKET_TTL_SECONDS
    assert all(k.startswith("sw:{acme}:") for k in recent.bucket_keys("acme"))


def test_counting_is_one_command_and_an_hour_costs_little_memory(client: redis.Redis) -> None:
    clock = ManualClock(1_800_000_000.0)
    recent = RecentRecipients(client, "sw", clock)
    for minute in range(60):  # an account at the 500-an-hour limit, every minute busy
        recent.add("acme", [f"m{minute}r{n}@example.org" for n in range(9)])
        clock.now += 60
    client.config_resetstat()
    assert 500 <= recent.count("acme") <= 560  # 531 sent over the last 59 minutes +-0.81 %
    stats = client.info("commandstats")
    assert stats["cmdstat_pfcount"]["calls"] == 1
    memory = sum(client.memory_usage(key) or 0 for key in client.keys("sw:{acme}:*"))
    assert memory < 20_000, memory  # sparse HyperLogLogs: a few bytes per recipient


def test_redis_down_is_a_store_error(redis_server: RedisServer, client: redis.Redis) -> None:
    recent = RecentRecipients(client, "sw")
    redis_server.stop()
    with pytest.raises(StoreError, match="redis"):
        recent.count("acme")
    with pytest.raises(StoreError, match="redis"):
        recent.add("acme", ["a@example.org"])


# -- the check over a real ledger and a real Redis ---------------------------------------


def settings(on_missing: str = "reject") -> Settings:
    return settings_from_mapping(
        {
            "policy": {"local_domains": ["hosting.example"], "trusted_networks": []},
            "consent": {
                "bulk_recipient_threshold": 50,
                "bulk_distinct_recipients_per_hour": 100,
                "on_missing_consent": on_missing,
            },
            "accounts": [{"id": "acme", "logins": ["alice@acme.example"]}],
        }
    )


def pipeline_for(store: ConsentStore, client: redis.Redis, on_missing: str = "reject") -> Pipeline:
    config = settings(on_missing)
    check = ConsentCheck(config.consent, lambda: store, RecentRecipients(client, "sw"))
    return Pipeline(config, [check])


def record(store: ConsentStore, kind: EventKind, recipients: Sequence[str], days: int = 0) -> None:
    store.append(
        NewEvent(
            account="acme",
            recipient=recipient,
            kind=kind,
            occurred_at=SIGNED_UP + timedelta(days=days),
            recorded_by="test",
            method="single-opt-in" if kind is EventKind.GRANTED else "unsubscribe-link",
        )
        for recipient in recipients
    )


def send(
    pipeline: Pipeline, recipients: Sequence[str], headers: Sequence[tuple[str, str]] = ()
) -> tuple[Transaction, Verdict]:
    txn = pipeline.begin(CLIENT, login="alice@acme.example", mail_from="news@acme.example")
    pipeline.mail(txn)
    for recipient in recipients:
        pipeline.rcpt(txn, recipient)
    for name, value in headers:
        pipeline.header(txn, name, value)
    return txn, pipeline.eom(txn)


def test_bulk_mail_against_the_ledger(consent_store: ConsentStore, client: redis.Redis) -> None:
    pipeline = pipeline_for(consent_store, client)
    record(consent_store, EventKind.GRANTED, people(60))
    assert send(pipeline, people(60), [UNSUBSCRIBE])[1].action is Action.CONTINUE

    record(consent_store, EventKind.REVOKED, ["p7@example.org"], days=3)
    _, verdict = send(pipeline, people(60), [UNSUBSCRIBE])
    assert verdict.reply().startswith(
        "550 5.7.1 Bulk mail from account acme refused: 1 of 60 recipients"
    )
    assert "p7@example.org" in verdict.reply()

    # 60 accepted recipients this hour: below 100, a personal mail is still personal.
    assert send(pipeline, ["friend@example.net"])[1].action is Action.CONTINUE
    assert RecentRecipients(client, "sw").count("acme") == 61


def test_remove_mode_against_the_ledger(consent_store: ConsentStore, client: redis.Redis) -> None:
    pipeline = pipeline_for(consent_store, client, on_missing="remove")
    record(consent_store, EventKind.GRANTED, people(55))
    txn, verdict = send(pipeline, people(60), [UNSUBSCRIBE])
    assert verdict.action is Action.CONTINUE
    assert txn.changes.remove_recipients == people(60)[55:]
    assert txn.changes.add_headers == [(REMOVED_HEADER, "5 recipients without consent")]
    assert RecentRecipients(client, "sw").count("acme") == 55  # the removed ones were not sent
