"""Every rule on a real Redis: a message costs at most two Redis round trips whatever
its number of recipients (SMTP or sendmail(1), a new account or a known one), and
the count stays exact (what a batch did not use goes back at end of message, the
recipients accepted beyond it are counted there, all or none, and the consent
rule's distinct recipients ride along)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from sendwarden.config import settings_from_mapping
from sendwarden.consent.bulk import RecentRecipients
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.store.suspensions import RedisSuspensionStore, suspension_store_from_settings
from tests.support.redis_server import RedisServer

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
LOCAL = Client(
    address=ipaddress.ip_address("127.0.0.1"), hostname="localhost", port=0, local_submission=True
)
MESSAGE_HEADERS = [("From", "Alice <alice@acme.example>"), ("Subject", "hello")]


@pytest.fixture
def runtime(redis_server: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    settings = settings_from_mapping(
        {
            "redis": {"url": redis_server.url},
            "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": 1000},
            "consent": {
                "database": f"sqlite:///{tmp_path / 'consent.db'}",
                # on, but these messages are not bulk mail: the count is what is tested
                "bulk_recipient_threshold": 10_000,
                "bulk_distinct_recipients_per_hour": 100_000,
            },
            "accounts": [
                {
                    "id": "acme",
                    "logins": ["alice@acme.example"],
                    "uids": [1001],
                    "domains": ["acme.example"],
                },
                {
                    "id": "small",
                    "logins": ["sam@small.example"],
                    "domains": ["small.example"],
                    "recipients_per_hour": 30,
                },
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


def begin(pipeline: Pipeline, login: str = "alice@acme.example") -> Transaction:
    txn = pipeline.begin(REMOTE, login=login, mail_from=login)
    assert not pipeline.mail(txn).is_final
    return txn


def finish(pipeline: Pipeline, txn: Transaction) -> str:
    for name, value in [("From", f"Someone <{txn.mail_from}>"), ("Subject", "hello")]:
        pipeline.header(txn, name, value)
    return pipeline.eom(txn).reply()


def send(pipeline: Pipeline, recipients: list[str], login: str = "alice@acme.example") -> str:
    txn = begin(pipeline, login)
    for recipient in recipients:
        assert not pipeline.rcpt(txn, recipient).is_final
    return finish(pipeline, txn)


def submit(pipeline: Pipeline, recipients: list[str]) -> str:
    """sendmail(1) mail as the milter sees it: everything at end of message, the
    account from the uid the adapter read from the queue file."""
    txn = pipeline.begin(LOCAL, login=None, mail_from="alice@acme.example")
    assert not pipeline.mail(txn).is_final
    for recipient in recipients:
        assert not pipeline.rcpt(txn, recipient).is_final
    for name, value in MESSAGE_HEADERS:
        pipeline.header(txn, name, value)
    txn.uid = 1001
    return pipeline.eom(txn).reply()


def used(client: redis.Redis, account: str = "acme") -> int:
    counts = client.hgetall(f"sw:{{{account}}}:rate")
    return sum(int(value) for field, value in counts.items() if field.isdigit())


def round_trips(redis_server: RedisServer, action: Callable[[], str]) -> int:
    with redis.Redis.from_url(redis_server.url) as observer:
        before = reads(observer)
        assert action() == ""
        return reads(observer) - before - 1  # less the INFO that read the second count


@pytest.mark.parametrize("count", [1, 10, 35, 100, 600])
def test_a_message_costs_at_most_two_round_trips(
    runtime: Runtime, redis_server: RedisServer, count: int
) -> None:
    pipeline = runtime.pipeline
    send(pipeline, ["warm@remote.example"])  # scripts loaded, connection open, cache warm
    recipients = [f"r{n}@remote.example" for n in range(count)]
    assert round_trips(redis_server, lambda: send(pipeline, recipients)) <= 2
    assert used(runtime.redis) == 1 + count  # exact: the batch's unused part went back
    distinct = runtime.redis.pfcount(*_hll_keys(runtime))  # consent's count: HyperLogLog,
    assert abs(distinct - (1 + count)) <= (1 + count) // 50  # exact for small counts


def test_a_new_account_costs_no_more_round_trips(
    runtime: Runtime, redis_server: RedisServer
) -> None:
    """No suspension entry in Redis yet: the durable store is asked without a GET,
    and "not suspended" is cached by the end-of-message round trip."""
    send(runtime.pipeline, ["warm@remote.example"], "sam@small.example")  # scripts loaded
    key = "sw:{acme}:suspended"
    assert runtime.redis.get(key) is None
    assert round_trips(redis_server, lambda: send(runtime.pipeline, ["a@remote.example"])) <= 2
    assert runtime.redis.get(key) == b"-"
    assert 0 < runtime.redis.ttl(key) <= 3600
    assert used(runtime.redis) == 1


def test_a_sendmail_submission_costs_at_most_two_round_trips(
    runtime: Runtime, redis_server: RedisServer
) -> None:
    send(runtime.pipeline, ["warm@remote.example"], "sam@small.example")  # scripts loaded
    recipients = [f"p{n}@remote.example" for n in range(35)]  # acme: new to Redis
    assert round_trips(redis_server, lambda: submit(runtime.pipeline, recipients)) <= 2
    assert used(runtime.redis) == 35
    assert runtime.redis.get("sw:{acme}:suspended") == b"-"
    again = [f"q{n}@remote.example" for n in range(5)]
    assert round_trips(redis_server, lambda: submit(runtime.pipeline, again)) <= 2
    assert used(runtime.redis) == 40


def test_recipients_that_no_longer_fit_at_the_end_defer_the_message(runtime: Runtime) -> None:
    """Accepted within the room MAIL saw, then another transaction of the account took
    it: 451 4.7.1 at end of message, and nothing of the deferred message stays counted."""
    pipeline = runtime.pipeline
    first = begin(pipeline, "sam@small.example")
    for n in range(20):
        assert not pipeline.rcpt(first, f"a{n}@remote.example").is_final
    assert send(pipeline, [f"b{n}@remote.example" for n in range(15)], "sam@small.example") == ""
    assert finish(pipeline, first).startswith("451 4.7.1 Account small has reached its limit")
    assert used(runtime.redis, "small") == 15
    assert send(pipeline, [f"c{n}@remote.example" for n in range(15)], "sam@small.example") == ""
    assert used(runtime.redis, "small") == 30


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


def test_a_suspension_only_the_database_still_has_is_refused_and_put_back(
    runtime: Runtime,
) -> None:
    """Redis restarted empty: the reservation finds no entry, the database has the
    suspension; the account is refused at MAIL and Redis has it again."""
    durable = suspension_store_from_settings(runtime.settings, runtime.redis)
    durable.suspend("acme", Suspension(reason="abuse report", since="2026-01-01T00:00:00Z"))
    durable.close()
    runtime.redis.delete("sw:{acme}:suspended")
    txn = runtime.pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert runtime.pipeline.mail(txn).reply().startswith("550 5.7.1 Account acme is suspended")
    assert b"abuse report" in (runtime.redis.get("sw:{acme}:suspended") or b"")
    assert used(runtime.redis) == 0
