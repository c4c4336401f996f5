"""Refunds that Redis could not take are kept, bounded, and paid once it answers."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sendwarden.ratelimit.owed import OwedRefunds
from sendwarden.store import StoreError


class Ledger:
    """A refund function that records what it was paid, or fails while ``down``."""

    def __init__(self) -> None:
        self.paid: dict[str, dict[int, int]] = {}
        self.down = False

    def refund(self, account_id: str, buckets: Mapping[int, int]) -> int:
        if self.down:
            raise StoreError("redis", "connection refused")
        for bucket, cost in buckets.items():
            account = self.paid.setdefault(account_id, {})
            account[bucket] = account.get(bucket, 0) + cost
        return sum(buckets.values())


def test_nothing_owed_is_falsy_and_pays_nothing() -> None:
    owed = OwedRefunds()
    assert not owed
    assert owed.pay(Ledger().refund) == 0


def test_refunds_add_up_per_account_and_bucket() -> None:
    owed = OwedRefunds()
    owed.add("acme", {100: 2, 101: 1})
    owed.add("acme", {101: 3})
    owed.add("globex", {100: 5})
    ledger = Ledger()
    assert owed.pay(ledger.refund) == 11
    assert ledger.paid == {"acme": {100: 2, 101: 4}, "globex": {100: 5}}
    assert not owed


def test_what_a_failed_payment_did_not_pay_stays_owed() -> None:
    owed = OwedRefunds()
    owed.add("acme", {100: 2})
    owed.add("globex", {100: 5})
    ledger = Ledger()
    ledger.down = True
    with pytest.raises(StoreError):
        owed.pay(ledger.refund)
    assert owed
    ledger.down = False
    assert owed.pay(ledger.refund) == 7
    assert ledger.paid == {"acme": {100: 2}, "globex": {100: 5}}


def test_memory_is_bounded_and_the_loss_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    owed = OwedRefunds(max_entries=2)
    owed.add("acme", {100: 1, 101: 1})
    owed.add("acme", {100: 4})  # an entry already kept still grows
    owed.add("globex", {100: 7})  # no room for a new entry: dropped
    ledger = Ledger()
    assert owed.pay(ledger.refund) == 6
    assert ledger.paid == {"acme": {100: 5, 101: 1}}
    assert "7 recipients could not be given back" in caplog.text
