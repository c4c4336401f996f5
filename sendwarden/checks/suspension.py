"""Suspended accounts are refused at MAIL. The store is normally a
:class:`~sendwarden.store.suspensions.CachedSuspensions`: an account seen unsuspended
in the last minutes costs no round trip here, and the rate limit's reservation
script refuses a suspension this check has not seen yet."""

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
