"""Suspended accounts are refused at MAIL. The store is normally a
:class:`~sendwarden.store.suspensions.CachedSuspensions` over the durable store
(Redis, then the database when Redis has no entry): an account the rate limit's MAIL
reservation has just seen unsuspended costs no round trip here, and that
reservation script itself refuses a suspension Redis knows."""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.decisionlog import add_note
from sendwarden.policy.facts import Transaction
from sendwarden.policy.suspension import RULE, Suspension, suspension_verdict
from sendwarden.policy.verdict import Verdict
from sendwarden.store.suspensions import SuspensionStore


class SuspensionCheck(Check):
    name = RULE
    answers_before_queue = True

    def __init__(self, store: SuspensionStore) -> None:
        self._store = store

    def at_mail(self, txn: Transaction) -> Verdict | None:
        if txn.account is None:
            return None
        return refuse_suspended(txn, txn.account.id, self._store.get(txn.account.id))

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if callable(close):
            close()


def refuse_suspended(
    txn: Transaction, account_id: str, suspension: Suspension | None
) -> Verdict | None:
    """The refusal of a suspended account, wherever it is found (this check, or the
    rate limiter's MAIL round trip): the whole record goes to the decision's notes for
    staff; the reply shows less (a staff reason is not the customer's to read)."""
    if suspension is not None:
        add_note(
            txn,
            f"suspended since {suspension.since} by {suspension.by or 'unknown'}: "
            f"{suspension.reason}",
        )
    return suspension_verdict(account_id, suspension)
