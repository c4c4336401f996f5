"""Every rule on a real Redis: a message costs at most two Redis round trips for up to
ten recipients, and the batched count stays exact (what a batch did not use goes
back at end of message, the consent rule's distinct recipients ride along)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sendwarden.config import settings_from_mapping
from sendwarden.consent.bulk import RecentRecipients
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.policy.suspension import Suspension
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.redis_server import RedisServer

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
MESSAGE_HEADERS = [("From", "Alice <alice@acme.example>"), ("Subject", "hello")]


@pytest.fixture
def runtime(redis_server: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    settings = settings_from_mapping(
        {
            "redis": {"url": redis_server.url},
            "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": 1000},
            "consent": {"database": f"sqlite:///{tmp_path / 'consent.db'}"},
            "accounts": [
                {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]}
            ],
        }
    )
    runtime = build_runtime(settings)
    yield runtime
    runtime.close()


def reads(client: redis.Redis) -> int:
    """Requests Redis has read (one per command or pipeline); ask on a connection that
    stays open, or its closing would be read too."""
    return int(client.info("stats")["total_reads_processed"])


def send(pipeline: Pipeline, recipients: list[str]) -> str:
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert not pipeline.mail(txn).is_final
    for recipient in recipients:
        assert not pipeline.rcpt(txn, recipient).is_final
    for name, value in MESSAGE_HEADERS:
        pipeline.header(txn, name, value)
    return pipeline.eom(txn).reply()


def used(client: redis.Redis) -> int:
    counts = client.hgetall("sw:{acme}:rate")
    return sum(int(value) for field, value in counts.items() if field.isdigit())


@pytest.mark.parametrize("count", [1, 10])
def test_a_message_costs_at_most_two_round_trips(
    runtime: Runtime, redis_server: RedisServer, count: int
) -> None:
    pipeline = runtime.pipeline
    send(pipeline, ["warm@remote.example"])  # scripts loaded, connection open, cache warm
    with redis.Redis.from_url(redis_server.url) as observer:
        before = reads(observer)
        assert send(pipeline, [f"r{n}@remote.example" for n in range(count)]) == ""
        trips = reads(observer) - before - 1  # less the INFO that read the second count
    assert trips <= 2
    assert used(runtime.redis) == 1 + count  # exact: the batch's unused part went back
    assert runtime.redis.pfcount(*_hll_keys(runtime)) == 1 + count  # consent's count


def test_more_recipients_than_a_batch_stay_exact(runtime: Runtime) -> None:
    assert send(runtime.pipeline, [f"r{n}@remote.example" for n in range(35)]) == ""
    assert used(runtime.redis) == 35


def test_a_refused_message_gives_everything_back(runtime: Runtime) -> None:
    pipeline = runtime.pipeline
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    pipeline.mail(txn)
    for n in range(3):
        pipeline.rcpt(txn, f"r{n}@remote.example")
    assert used(runtime.redis) == 10  # one batch reserved ahead
    pipeline.abort(txn)
    assert used(runtime.redis) == 0


def test_a_suspension_by_staff_is_refused_at_mail_at_once_and_lifted_at_once(
    runtime: Runtime,
) -> None:
    pipeline = runtime.pipeline
    assert send(pipeline, ["a@remote.example"]) == ""  # the suspension cache says "clear"
    store = RedisSuspensionStore(runtime.redis)
    store.suspend("acme", Suspension(reason="abuse report", since="2026-01-01T00:00:00Z"))
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert pipeline.mail(txn).reply().startswith("550 5.7.1 Account acme is suspended")
    assert used(runtime.redis) == 1  # nothing reserved for the refused message
    store.lift("acme")
    assert send(pipeline, ["b@remote.example"]) == ""


def _hll_keys(runtime: Runtime) -> list[str]:
    return RecentRecipients(runtime.redis).bucket_keys("acme")
