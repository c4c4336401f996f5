"""The MAIL-time suspension cache: "not suspended" for a few seconds, "suspended" never."""

from __future__ import annotations

from sendwarden.policy.suspension import Suspension
from sendwarden.store.suspensions import NEGATIVE_TTL_SECONDS, CachedSuspensions
from tests.support.clock import ManualClock
from tests.unit.fakes import MemorySuspensions

SUSPENSION = Suspension(reason="abuse report", since="2026-01-01T00:00:00Z")


def test_clear_is_remembered_for_the_ttl_only() -> None:
    store, clock = MemorySuspensions(), ManualClock(1000.0)
    cache = CachedSuspensions(store, ttl=10, clock=clock)
    assert cache.get("acme") is None
    store.suspended["acme"] = SUSPENSION  # behind the cache's back (another host, staff)
    assert cache.get("acme") is None  # remembered: the reservation script still refuses
    clock.now += 10.5
    assert cache.get("acme") == SUSPENSION


def test_suspended_is_never_remembered_so_a_lift_counts_at_once() -> None:
    store = MemorySuspensions()
    cache = CachedSuspensions(store, ttl=10, clock=ManualClock(0.0))
    store.suspended["acme"] = SUSPENSION
    assert cache.get("acme") == SUSPENSION
    store.lift("acme")
    assert cache.get("acme") is None


def test_a_reservation_that_saw_the_suspension_ends_the_clear_period() -> None:
    store = MemorySuspensions()
    cache = CachedSuspensions(store, ttl=10, clock=ManualClock(0.0))
    cache.seen_unsuspended("acme")
    store.down = True
    assert cache.get("acme") is None  # no round trip needed
    store.down = False
    store.suspended["acme"] = SUSPENSION
    cache.seen_suspended("acme")
    assert cache.get("acme") == SUSPENSION


class DurableLike(MemorySuspensions):
    """A store with the durable store's get_absent: the database alone, no Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.redis_gets = 0
        self.database_reads = 0

    def get(self, account_id: str) -> Suspension | None:
        self.redis_gets += 1
        return super().get(account_id)

    def get_absent(self, account_id: str) -> Suspension | None:
        self.database_reads += 1
        return self.suspended.get(account_id)


def test_an_account_redis_does_not_know_is_asked_of_the_database_without_a_get() -> None:
    """The reservation saw no entry: the database answers (no Redis GET), and "not
    suspended" is handed once to the end-of-message round trip to cache in Redis."""
    store, clock = DurableLike(), ManualClock(0.0)
    cache = CachedSuspensions(store, ttl=10, clock=clock)
    cache.seen_absent("acme")
    assert cache.get("acme") is None
    assert (store.redis_gets, store.database_reads) == (0, 1)
    assert cache.take_fill("acme") == NEGATIVE_TTL_SECONDS
    assert cache.take_fill("acme") == 0  # once
    assert cache.get("acme") is None  # remembered clear: no store at all
    assert (store.redis_gets, store.database_reads) == (0, 1)


def test_a_suspension_only_the_database_knows_is_refused_and_never_filled_as_clear() -> None:
    store, clock = DurableLike(), ManualClock(0.0)
    cache = CachedSuspensions(store, ttl=10, clock=clock)
    store.suspended["acme"] = SUSPENSION
    cache.seen_absent("acme")
    assert cache.get("acme") == SUSPENSION
    assert cache.take_fill("acme") == 0
    clock.now += 11  # a stale "absent" is not believed: the ordinary path asks Redis
    cache.seen_absent("globex")
    clock.now += 11
    assert cache.get("globex") is None
    assert (store.redis_gets, store.database_reads) == (1, 1)
