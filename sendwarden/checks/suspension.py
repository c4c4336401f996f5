"""Suspended accounts are refused at MAIL. The store is normally a
:class:`~sendwarden.store.suspensions.CachedSuspensions` over the durable store
(Redis, then the database when Redis has no entry): an account the rate limit's MAIL
reservation has just seen unsuspended costs no round trip here, and that
reservation script itself refuses a suspension Redis knows."""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.policy.facts import Transaction
from sendwarden.policy.suspension import RULE, suspension_verdict
from sendwarden.policy.verdict import Verdict
from sendwarden.store.suspensions import SuspensionStore


class SuspensionCheck(Check):
    name = RULE

    def __init__(self, store: SuspensionStore) -> None:
        self._store = store

    def at_mail(self, txn: Transaction) -> Verdict | None:
        if txn.account is None:
            return None
        return suspension_verdict(txn.account.id, self._store.get(txn.account.id))

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if callable(close):
            close()
