"""The Lua counter on a real Redis: decision for decision the same as the pure
window model (which tests/unit/test_ratelimit_window.py holds against an exact
log), exact refunds, atomic suspension, status/reset, Cluster-safe keys, and
behaviour when Redis is down or silent."""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from sendwarden.config import RedisSettings
from sendwarden.ratelimit import RecipientCounter, SuspensionPolicy
from sendwarden.ratelimit.counter import RECORD_SECONDS, lua_string
from sendwarden.ratelimit.window import MICROSECONDS, BucketWindow, bucket_of
from sendwarden.store import StoreError
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.clock import ManualClock
from tests.support.redis_server import RedisServer

START_US = 1_700_000_000 * MICROSECONDS
_accounts = itertools.count()


def fresh_account() -> str:
    """A new account id per example, so hypothesis runs never see each other's counts."""
    return f"acct{next(_accounts)}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = connect(RedisSettings(url=redis_server.url, timeout_ms=1000))
    yield client
    client.close()


# -- the script against the model ----------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.integers(min_value=0, max_value=15 * 60 * MICROSECONDS),  # gap
            st.integers(min_value=1, max_value=6),  # cost
        ),
        st.tuples(st.just("refund"), st.integers(min_value=0, max_value=1000), st.just(0)),
    ),
    min_size=1,
    max_size=80,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=st.integers(min_value=1, max_value=30), operations=operations)
def test_script_decides_exactly_like_the_model(
    client: redis.Redis, limit: int, operations: list[tuple[str, int, int]]
) -> None:
    """Random arrival times, costs and refunds: every decision, count, bucket and
    "frees up at" of the script equals the model's, so the script never admits what
    the model refuses and never refuses what the model admits."""
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "prop", clock=clock)
    model = BucketWindow(limit, clock)
    account = fresh_account()
    admitted: list[tuple[str, int, int]] = []
    for kind, number, cost in operations:
        if kind == "refund":
            if admitted:
                reservation, bucket, cost = admitted.pop(number % len(admitted))
                counter.refund(account, {reservation: bucket})
                model.refund(bucket, cost)
            continue
        clock.now += number
        got = counter.reserve(account, cost, limit)
        want = model.reserve(cost)
        assert (got.admitted, got.used, got.bucket) == (want.admitted, want.used, want.bucket)
        assert got.frees_at == want.frees_at
        assert got.now == clock.now / MICROSECONDS
        if got.admitted:
            admitted.append((got.reservation, got.bucket, cost))
    assert counter.usage(account).used == model.used()


def test_time_is_taken_inside_redis(client: redis.Redis) -> None:
    counter = RecipientCounter(client, "sw")
    decision = counter.reserve("acme", 2, 5)
    assert decision.admitted and decision.used == 2
    seconds, micros = client.time()
    redis_now = seconds + micros / MICROSECONDS
    assert redis_now - 5 < decision.now <= redis_now
    assert decision.bucket == bucket_of(int(decision.now * MICROSECONDS))


def test_refund_returns_exactly_what_was_reserved_even_across_buckets(client: redis.Redis) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "sw", clock=clock)
    first = counter.reserve("acme", 2, 10)
    clock.now += 61 * MICROSECONDS  # next bucket
    second = counter.reserve("acme", 3, 10)
    assert first.bucket != second.bucket
    assert (
        counter.refund("acme", {first.reservation: first.bucket, second.reservation: second.bucket})
        == 5
    )
    assert counter.usage("acme").used == 0
    assert client.hlen("sw:{acme}:rate") == 0
    # a reservation whose bucket already left the window is not resurrected
    old = counter.reserve("acme", 1, 10)
    clock.now += 2 * 3600 * MICROSECONDS
    counter.reserve("acme", 1, 10)  # cleans the expired bucket
    assert counter.refund("acme", {old.reservation: old.bucket}) == 0
    assert counter.usage("acme").used == 1


def test_keys_share_one_cluster_slot_per_account(client: redis.Redis) -> None:
    counter = RecipientCounter(client, "sw")
    for account in ("acme", "globex", "x{y}z", "ünïcode"):
        keys = counter.keys(account)
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        assert keys[2] == RedisSuspensionStore(client, "sw").key(account)


# -- suspension -----------------------------------------------------------------


def test_one_episode_over_the_limit_is_one_strike_and_enough_strikes_suspend(
    client: redis.Redis,
) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(
        client, "sw", clock=clock, suspension=SuspensionPolicy(after=3, period=86400)
    )
    suspensions = RedisSuspensionStore(client, "sw")

    def fill_and_overflow() -> list[bool]:
        assert counter.reserve("acme", 2, 2, "too many").admitted
        return [counter.reserve("acme", 1, 2, "too many").suspended for _ in range(4)]

    assert fill_and_overflow() == [False] * 4  # strike 1, the rest of the episode is free
    assert counter.usage("acme").strikes == 1
    clock.now += 2 * 3600 * MICROSECONDS  # the window empties: a new episode
    assert fill_and_overflow() == [False] * 4
    assert suspensions.get("acme") is None
    clock.now += 2 * 3600 * MICROSECONDS
    assert fill_and_overflow() == [True, False, False, False]  # strike 3 suspends, once
    suspension = suspensions.get("acme")
    assert suspension is not None
    assert suspension.reason == "too many"
    assert suspension.by == "sendwarden rate limit"
    expected = datetime.fromtimestamp(clock.now // MICROSECONDS, UTC)
    assert suspension.since == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert json.loads(client.get("sw:{acme}:suspended") or b"")["reason"] == "too many"
    assert counter.usage("acme").strikes == 0  # strikes start afresh after a suspension


def test_strikes_older_than_the_period_do_not_count(client: redis.Redis) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(
        client, "sw", clock=clock, suspension=SuspensionPolicy(after=2, period=3 * 3600)
    )
    for _ in range(3):
        assert counter.reserve("acme", 1, 1).admitted
        assert not counter.reserve("acme", 1, 1).suspended
        clock.now += 4 * 3600 * MICROSECONDS  # past the period each time
    assert RedisSuspensionStore(client, "sw").get("acme") is None


def test_no_suspension_when_disabled(client: redis.Redis) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "sw", clock=clock)  # after=0
    for _ in range(5):
        counter.reserve("acme", 1, 1)
        counter.reserve("acme", 1, 1)
        clock.now += 2 * 3600 * MICROSECONDS
    assert client.exists("sw:{acme}:suspended", "sw:{acme}:strikes") == 0


def test_watch_only_refusals_strike_and_suspend_nobody(client: redis.Redis) -> None:
    """Monitor-only mode: the limit still says "over", but the account is not suspended
    (and gathers no strikes that a later, enforced refusal would complete)."""
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "sw", clock=clock, suspension=SuspensionPolicy(after=1))
    assert counter.reserve("acme", 1, 1, "too many", watch_only=True).admitted
    refused = counter.reserve("acme", 1, 1, "too many", watch_only=True)
    assert not refused.admitted and not refused.suspended
    assert client.exists("sw:{acme}:suspended", "sw:{acme}:strikes") == 0
    assert counter.reserve("acme", 1, 1, "too many").suspended  # enforced again: it counts


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=13_000_000_000))
def test_suspension_date_written_by_lua_matches_python(client: redis.Redis, seconds: int) -> None:
    """The script formats ISO 8601 dates itself (Redis Lua has no os.date)."""
    clock = ManualClock(seconds * MICROSECONDS + 123_456)
    counter = RecipientCounter(client, "d", clock=clock, suspension=SuspensionPolicy(after=1))
    account = fresh_account()
    counter.reserve(account, 1, 1)
    assert counter.reserve(account, 1, 1).suspended
    suspension = RedisSuspensionStore(client, "d").get(account)
    assert suspension is not None
    assert suspension.since == datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- status, reset, memory -----------------------------------------------------------


def test_usage_and_reset(client: redis.Redis) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "sw", clock=clock)
    first = counter.reserve("acme", 2, 10)
    clock.now += 300 * MICROSECONDS
    last = counter.reserve("acme", 3, 10)
    usage = counter.usage("acme")
    assert usage.used == 5
    assert usage.next_free_at == (first.bucket + 1) * 60 + 3600
    assert usage.all_free_at == (last.bucket + 1) * 60 + 3600
    assert counter.reset("acme")
    assert counter.usage("acme").used == 0


def test_memory_per_account_at_500_recipients_an_hour_stays_small(client: redis.Redis) -> None:
    clock = ManualClock(START_US)
    counter = RecipientCounter(client, "sw", clock=clock)
    for _ in range(500):  # one recipient every 7.2 s: every minute bucket in use
        assert counter.reserve("acme", 1, 500).admitted
        clock.now += 7_200_000
    assert client.hlen("sw:{acme}:rate") <= 61  # 60 minutes, plus one partly expired
    assert (client.memory_usage("sw:{acme}:rate") or 0) < 1500
    # The reservation records (what makes a refund idempotent) are kept 15 minutes,
    # not the hour: at most the last 16 minute buckets' worth are alive at any time.
    records = sorted(key.decode() for key in client.keys("sw:{acme}:res:*"))
    assert all(0 < client.pttl(key) <= RECORD_SECONDS * 1000 for key in records)
    alive = records[-(RECORD_SECONDS // 60 + 1) :]
    record_bytes = sum(client.memory_usage(key) or 0 for key in alive)
    print(f"500 recipients/hour: live reservation records = {record_bytes} bytes")
    assert record_bytes < 6000


# -- Redis down or silent ----------------------------------------------------------


def test_redis_down_raises_store_error_and_recovers(redis_server: RedisServer) -> None:
    client = connect(RedisSettings(url=redis_server.url, timeout_ms=500))
    counter = RecipientCounter(client, "sw")
    assert counter.reserve("acme", 1, 5).admitted
    redis_server.stop()
    try:
        with pytest.raises(StoreError, match="counting recipients of account acme"):
            counter.reserve("acme", 1, 5)
        with pytest.raises(StoreError):
            counter.refund("acme", {"r1": 1})
    finally:
        redis_server.start()  # same port; scripts are gone (NOSCRIPT is handled)
    decision = counter.reserve("acme", 1, 5)
    assert decision.admitted and decision.used == 1  # a fresh, empty Redis
    client.close()


def test_silent_redis_costs_at_most_the_timeout() -> None:
    """A Redis that accepts connections but never answers (hung, overloaded)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        client = connect(RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout_ms=100))
        counter = RecipientCounter(client, "sw")
        with pytest.raises(StoreError, match="redis"):
            counter.reserve("acme", 1, 5)
        client.close()
    finally:
        stop.set()
        thread.join()
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.parametrize(
    "text",
    ["sendwarden rate limit", 'quote " backslash \\ newline \n digits after escape \t1', "Zoë 雪"],
)
def test_settings_written_into_the_script_survive_lua_quoting(
    client: redis.Redis, text: str
) -> None:
    assert client.eval(f"return {lua_string(text)}", 0) == text.encode()


def test_suspension_records_who_suspended(client: redis.Redis) -> None:
    account = fresh_account()
    counter = RecipientCounter(
        client, "sw", suspension=SuspensionPolicy(after=1, period=3600, by='staff "night" desk')
    )
    assert counter.reserve(account, 1, 1).admitted
    decision = counter.reserve(account, 1, 1, "over the limit")
    assert decision.suspended
    suspension = RedisSuspensionStore(client, "sw").get(account)
    assert suspension is not None
    assert (suspension.by, suspension.reason) == ('staff "night" desk', "over the limit")
