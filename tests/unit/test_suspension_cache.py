"""The MAIL-time suspension cache: "not suspended" for a few seconds, "suspended" never."""

from __future__ import annotations

from sendwarden.policy.suspension import Suspension
from sendwarden.store.suspensions import CachedSuspensions
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
