"""The counter under latency faults on a real Redis (issue 13, item 1).

A latency-adding TCP proxy sits between sendwarden and Redis: requests that time out
at the client still reach Redis and run later. Reservations and refunds carry ids,
so a late or repeated refund gives back nothing twice and never takes what other
reservations counted, and a reservation refunded before it arrived counts nothing:
the count never drops below what was accepted, and nothing is over-admitted.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.config import RedisSettings, Settings, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.ratelimit import RecipientCounter, counter_from_settings
from sendwarden.ratelimit.counter import UNKNOWN_BUCKET
from sendwarden.store import StoreError
from sendwarden.store.redis import connect
from tests.support.latency_proxy import LatencyProxy
from tests.support.redis_server import RedisServer
from tests.support.service import wait_until

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
TIMEOUT_MS = 60
LIMIT = 6
_accounts = itertools.count()


@dataclass
class Rig:
    proxy: LatencyProxy
    direct: redis.Redis  # straight to Redis, for the test's own reads
    slow: redis.Redis  # through the proxy, as sendwarden sees Redis
    settings: Settings

    def counter(self, client: redis.Redis | None = None) -> RecipientCounter:
        return counter_from_settings(self.settings, client or self.direct)

    def used(self, account: str) -> int:
        return self.counter().usage(account).used

    def warm(self) -> RecipientCounter:
        """A counter through the proxy whose connection is open and scripts loaded, so
        a delayed call is the call itself (not the connection handshake)."""
        counter = self.counter(self.slow)
        counter.refund("warm-up", {"warm-up": UNKNOWN_BUCKET})
        counter.reserve("warm-up", 1, 10**6)
        return counter


@pytest.fixture
def rig(redis_server: RedisServer) -> Iterator[Rig]:
    accounts = [{"id": f"a{n}", "logins": [f"a{n}@hosting.example"]} for n in range(400)]
    with LatencyProxy(redis_server.host, redis_server.port) as proxy:
        settings = settings_from_mapping(
            {
                "redis": {"url": f"redis://127.0.0.1:{proxy.port}/0", "timeout_ms": TIMEOUT_MS},
                "policy": {"local_domains": ["hosting.example"], "recipients_per_hour": LIMIT},
                "accounts": accounts,
            }
        )
        direct = connect(RedisSettings(url=redis_server.url, timeout_ms=5000))
        slow = connect(settings.redis)
        yield Rig(proxy, direct, slow, settings)
        slow.close()
        direct.close()


def settle(rig: Rig, check: RecipientRateCheck) -> None:
    """Latency gone: every delayed request has run, then what is owed is paid."""
    rig.proxy.delay = 0
    rig.proxy.wait_idle()

    def paid() -> bool:
        try:
            check.pay_owed()
        except StoreError:  # a loaded machine can miss even a 60 ms timeout: again
            return False
        return True

    wait_until(paid, 30, "owed refunds were never paid", interval=0.05)
    rig.proxy.wait_idle()


def test_a_refund_that_timed_out_and_ran_late_is_not_paid_twice(rig: Rig) -> None:
    """The issue's case: the refund times out, Redis runs it late, the next
    reservation pays it again; the old refund.lua took it twice (wiping others'
    counts) and let the account go over its limit."""
    slow = rig.warm()
    account = "a0"
    others = [rig.counter().reserve(account, 1, LIMIT) for _ in range(3)]  # accepted mail
    assert all(decision.admitted for decision in others)
    mine = rig.counter().reserve(account, 2, LIMIT)
    rig.proxy.delay = 0.3
    with pytest.raises(StoreError):
        slow.refund(account, {mine.reservation: mine.bucket})
    rig.proxy.delay = 0
    rig.proxy.wait_idle()  # it ran late
    assert rig.used(account) == 3
    for _ in range(3):  # paid again (owed), and again: nothing more is given back
        assert slow.refund(account, {mine.reservation: mine.bucket}) == 0
    assert rig.used(account) == 3
    admitted = sum(rig.counter().reserve(account, 1, LIMIT).admitted for _ in range(10))
    assert admitted == LIMIT - 3  # nothing over the limit


def test_a_reservation_refunded_before_it_ran_counts_nothing(rig: Rig) -> None:
    slow = rig.warm()
    account = "a1"
    rig.proxy.delay = 0.3
    with pytest.raises(StoreError):
        slow.reserve(account, 2, LIMIT, reservation="late.1")
    # the caller gives it back while Redis has not seen it yet
    assert rig.counter().refund(account, {"late.1": UNKNOWN_BUCKET}) == 0
    rig.proxy.delay = 0
    rig.proxy.wait_idle()  # now it arrives
    assert rig.used(account) == 0


def test_a_reservation_that_timed_out_but_ran_is_found_and_refunded(rig: Rig) -> None:
    slow = rig.warm()
    account = "a2"
    rig.counter().reserve(account, 1, LIMIT)
    rig.proxy.delay = 0.2
    with pytest.raises(StoreError):
        slow.reserve(account, 2, LIMIT, reservation="late.2")
    rig.proxy.delay = 0
    rig.proxy.wait_idle()
    assert rig.used(account) == 3
    assert rig.counter().refund(account, {"late.2": UNKNOWN_BUCKET}) == 2
    assert rig.counter().refund(account, {"late.2": UNKNOWN_BUCKET}) == 0
    assert rig.used(account) == 1


def test_a_retried_reservation_counts_once(rig: Rig) -> None:
    counter = rig.counter()
    first = counter.reserve("a3", 2, LIMIT, reservation="retry.1")
    again = counter.reserve("a3", 2, LIMIT, reservation="retry.1")
    assert first.admitted and again.admitted and again.bucket == first.bucket
    assert rig.used("a3") == 2


def test_reset_forgets_records_so_old_refunds_take_nothing(rig: Rig) -> None:
    counter = rig.counter()
    before = counter.reserve("a4", 2, LIMIT)
    counter.reset("a4")
    counter.reserve("a4", 3, LIMIT)
    assert counter.refund("a4", {before.reservation: before.bucket}) == 0
    assert rig.used("a4") == 3


messages = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=4),  # recipients
        st.booleans(),  # aborted (the quota is refunded) or accepted
        st.sampled_from([0.0, 0.0, 0.03, 0.09, 0.25]),  # latency added before it
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=messages)
def test_latency_and_timeouts_never_lose_or_double_a_count(
    rig: Rig, messages: list[tuple[int, bool, float]]
) -> None:
    """Messages through the real pipeline while Redis answers late or not in time:
    after every message the window holds at least what was accepted; once the
    latency is gone and what is owed is paid, exactly that; never over the limit."""
    account = f"a{next(_accounts) % 390 + 10}"
    rig.direct.delete(*rig.counter().keys(account))
    check = RecipientRateCheck(rig.counter(rig.slow), rig.settings)
    pipeline = Pipeline(rig.settings, [check])
    accepted = tempfailed = 0
    for count, abort, delay in messages:
        rig.proxy.delay = delay
        txn = pipeline.begin(REMOTE, login=f"{account}@hosting.example", mail_from="s@x.example")
        pipeline.mail(txn)
        replies = [pipeline.rcpt(txn, f"r{n}@example.net").reply() for n in range(count)]
        tempfailed += sum(reply.startswith("451") for reply in replies)
        if abort:
            pipeline.abort(txn)
        elif pipeline.eom(txn).reply() == "":
            accepted += sum(reply == "" for reply in replies)
        assert rig.used(account) >= accepted
    settle(rig, check)
    assert accepted <= LIMIT, (accepted, tempfailed)
    assert rig.used(account) == accepted, (accepted, tempfailed)
