"""Quota owed back to accounts after Redis failed to take a refund.

A message refused or aborted after its recipients were counted gives them back. When
Redis is down at that moment the refund cannot be made; without this, the account
would stay charged for mail it never sent until the buckets leave the window. The
refunds are kept here, bounded, and paid on the next call that reaches Redis. Buckets
that have left the window by then cost nothing to pay back (the refund script does
not recreate them).

A refund that timed out may still have run in Redis, and a reservation that timed
out may still run later: both are kept here by reservation id, and the refund script
gives each id back at most once, so paying again never gives back twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from sendwarden.store import StoreError

log = logging.getLogger(__name__)

#: Most (account, reservation) entries kept; an outage long enough to fill this has
#: already pushed the oldest buckets out of the window.
MAX_ENTRIES = 100_000

Refund = Callable[[str, Mapping[str, int]], int]  # account, {reservation id: bucket}


class OwedRefunds:
    """Refunds that failed, per account and reservation id, waiting for Redis."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._owed: dict[str, dict[str, int]] = {}
        self._entries = 0
        self._max_entries = max_entries
        self._dropped = 0

    def __bool__(self) -> bool:
        """Cheap, lock-free test for the hot path: is anything owed?"""
        return bool(self._owed)

    def add(self, account_id: str, reservations: Mapping[str, int]) -> None:
        """Owe ``{reservation id: bucket}`` to the account (an id owed twice is one)."""
        with self._lock:
            owed = self._owed.setdefault(account_id, {})
            for reservation, bucket in reservations.items():
                if reservation not in owed:
                    if self._entries >= self._max_entries:
                        self._dropped += 1
                        continue
                    self._entries += 1
                owed[reservation] = bucket
            if not owed:
                del self._owed[account_id]

    def pay(self, refund: Refund) -> int:
        """Pay everything owed with ``refund``; returns the recipients given back.

        Raises StoreError if Redis is still down; what was not paid stays owed.
        """
        with self._lock:
            owed, self._owed, self._entries = self._owed, {}, 0
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning(
                "%d reservations could not be given back after the Redis outage (too many "
                "refunds waited); those accounts stay charged until the hour passes",
                dropped,
            )
        paid = 0
        accounts = list(owed.items())
        for index, (account_id, buckets) in enumerate(accounts):
            try:
                paid += refund(account_id, buckets)
            except StoreError:
                for unpaid_account, unpaid in accounts[index:]:
                    self.add(unpaid_account, unpaid)
                raise
        if paid:
            log.info("gave back %d recipients owed since the Redis outage", paid)
        return paid
