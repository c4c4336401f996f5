"""Refunds that Redis could not take are kept, bounded, and paid once it answers."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sendwarden.ratelimit.owed import OwedRefunds
from sendwarden.store import StoreError


class Ledger:
    """A refund function that records what it was paid, or fails while ``down``."""

    def __init__(self) -> None:
        self.paid: dict[str, dict[str, int]] = {}
        self.down = False

    def refund(self, account_id: str, reservations: Mapping[str, int]) -> int:
        if self.down:
            raise StoreError("redis", "connection refused")
        self.paid.setdefault(account_id, {}).update(reservations)
        return len(reservations)


def test_nothing_owed_is_falsy_and_pays_nothing() -> None:
    owed = OwedRefunds()
    assert not owed
    assert owed.pay(Ledger().refund) == 0


def test_refunds_are_kept_per_account_and_reservation_once() -> None:
    owed = OwedRefunds()
    owed.add("acme", {"a.1": 100, "a.2": 101})
    owed.add("acme", {"a.2": 101, "a.3": -1})  # owing an id twice owes it once
    owed.add("globex", {"g.1": 100})
    ledger = Ledger()
    assert owed.pay(ledger.refund) == 4
    assert ledger.paid == {"acme": {"a.1": 100, "a.2": 101, "a.3": -1}, "globex": {"g.1": 100}}
    assert not owed


def test_what_a_failed_payment_did_not_pay_stays_owed() -> None:
    owed = OwedRefunds()
    owed.add("acme", {"a.1": 100})
    owed.add("globex", {"g.1": 100})
    ledger = Ledger()
    ledger.down = True
    with pytest.raises(StoreError):
        owed.pay(ledger.refund)
    assert owed
    ledger.down = False
    assert owed.pay(ledger.refund) == 2
    assert ledger.paid == {"acme": {"a.1": 100}, "globex": {"g.1": 100}}


def test_memory_is_bounded_and_the_loss_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    owed = OwedRefunds(max_entries=2)
    owed.add("acme", {"a.1": 100, "a.2": 101})
    owed.add("acme", {"a.1": 100})  # an entry already kept is kept
    owed.add("globex", {"g.1": 100, "g.2": 100})  # no room for new entries: dropped
    ledger = Ledger()
    assert owed.pay(ledger.refund) == 2
    assert ledger.paid == {"acme": {"a.1": 100, "a.2": 101}}
    assert "2 reservations could not be given back" in caplog.text
