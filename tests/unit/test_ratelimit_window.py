"""The window's semantics (pure model) against an exact per-recipient log.

The Lua script is checked against this same model in
tests/integration/test_ratelimit_counter.py, so together they show the script
never admits more than the limit in any rolling hour.
"""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.ratelimit.window import (
    BUCKET_SECONDS,
    MICROSECONDS,
    WINDOW_SECONDS,
    BucketWindow,
    bucket_expiry,
    frees_at,
)
from tests.support.clock import ManualClock

HOUR_US = WINDOW_SECONDS * MICROSECONDS
BUCKET_US = BUCKET_SECONDS * MICROSECONDS
START_US = 1_700_000_000 * MICROSECONDS


def exact_count(admitted: list[tuple[int, int]], start_us: int, end_us: int) -> int:
    """Recipients admitted in (start, end] according to an exact log."""
    return sum(cost for at, cost in admitted if start_us < at <= end_us)


def max_in_any_rolling_hour(admitted: list[tuple[int, int]]) -> int:
    """The most recipients any half-open hour (t - 3600 s, t] holds; the worst such hour
    ends at an admission, so checking those suffices."""
    times = [at for at, _ in admitted]
    costs = [cost for _, cost in admitted]
    worst = 0
    for index, end in enumerate(times):
        first = bisect_right(times, end - HOUR_US)
        worst = max(worst, sum(costs[first : index + 1]))
    return worst


arrivals = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=20 * 60 * MICROSECONDS),  # gap before this one
        st.integers(min_value=1, max_value=8),  # cost (recipients)
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(min_value=1, max_value=40), arrivals=arrivals)
def test_never_over_the_limit_in_any_rolling_hour(
    limit: int, arrivals: list[tuple[int, int]]
) -> None:
    clock = ManualClock(START_US)
    window = BucketWindow(limit, clock)
    admitted: list[tuple[int, int]] = []
    for gap, cost in arrivals:
        clock.now += gap
        if window.reserve(cost).admitted:
            admitted.append((clock.now, cost))
    assert max_in_any_rolling_hour(admitted) <= limit


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(min_value=1, max_value=40), arrivals=arrivals)
def test_refuses_only_when_an_exact_log_over_one_more_bucket_is_full(
    limit: int, arrivals: list[tuple[int, int]]
) -> None:
    """Early by at most one bucket: a refusal means the exact count over the hour plus
    one bucket is at the limit, so capacity comes back at most 60 s late."""
    clock = ManualClock(START_US)
    window = BucketWindow(limit, clock)
    admitted: list[tuple[int, int]] = []
    for gap, cost in arrivals:
        clock.now += gap
        decision = window.reserve(cost)
        now = clock.now
        if decision.admitted:
            admitted.append((now, cost))
            continue
        longer = exact_count(admitted, now - HOUR_US - BUCKET_US, now)
        assert cost > limit or longer + cost > limit
        # and it is refused by an exact log too whenever that log is full already
        assert decision.used >= exact_count(admitted, now - HOUR_US, now)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(min_value=1, max_value=40), arrivals=arrivals)
def test_frees_at_is_the_first_moment_the_cost_fits(
    limit: int, arrivals: list[tuple[int, int]]
) -> None:
    clock = ManualClock(START_US)
    window = BucketWindow(limit, clock)
    for gap, cost in arrivals:
        clock.now += gap
        decision = window.reserve(cost)
        if decision.admitted or decision.frees_at is None:
            continue
        refused_at = clock.now
        free_us = decision.frees_at * MICROSECONDS
        assert free_us > refused_at
        clock.now = free_us - 1
        assert window.used() + cost > limit, "fits before the promised time"
        clock.now = free_us
        assert window.used() + cost <= limit, "does not fit at the promised time"
        clock.now = refused_at


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=30),
    costs=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=40),
    gap=st.integers(min_value=0, max_value=5 * MICROSECONDS),
)
def test_refunds_give_back_exactly_what_was_reserved(
    limit: int, costs: list[int], gap: int
) -> None:
    clock = ManualClock(START_US)
    window = BucketWindow(limit, clock)
    taken: list[tuple[int, int]] = []
    for cost in costs:
        clock.now += gap
        decision = window.reserve(cost)
        if decision.admitted:
            taken.append((decision.bucket, cost))
    for bucket, cost in taken:
        window.refund(bucket, cost)
    assert window.used() == 0
    assert window.buckets == {}


def test_a_full_window_frees_one_bucket_after_the_hour() -> None:
    clock = ManualClock(START_US + 10 * MICROSECONDS)  # 10 s into a bucket
    window = BucketWindow(3, clock)
    assert all(window.reserve(1).admitted for _ in range(3))
    refused = window.reserve(1)
    assert not refused.admitted and refused.used == 3
    bucket = START_US // BUCKET_US
    assert refused.frees_at == bucket_expiry(bucket) == (bucket + 1) * 60 + 3600


def test_frees_at_needs_the_oldest_buckets_first() -> None:
    live = {100: 2, 101: 3, 105: 1}
    assert frees_at(live, used=6, cost=1, limit=6) == bucket_expiry(100)
    assert frees_at(live, used=6, cost=3, limit=6) == bucket_expiry(101)
    assert frees_at(live, used=6, cost=6, limit=6) == bucket_expiry(105)
    assert frees_at(live, used=6, cost=7, limit=6) is None  # more than the limit: never
    assert frees_at(live, used=3, cost=3, limit=6) == 0  # fits now
