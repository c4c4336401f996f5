"""Recipient rate limit: reserve at RCPT, give back when the message is not accepted.

Each SMTP recipient is one reservation (one Redis round trip), so the recipients
before the one that crosses the limit go through and the rest are deferred.
sendmail(1) mail is judged whole at end of message: all its recipients are
reserved in one round trip, or none. A transaction that ends without being
accepted (refused later, aborted, connection lost) returns what it reserved, by
reservation id, to the very buckets it reserved in; when Redis is down at that
moment, the refund is owed and paid before the next reservation. A reservation
whose answer never came (Redis timed out) may still be counted late: unless its
recipient was accepted anyway (``on_store_error = "accept"``) it is owed back at
once, and the refund script's ids make sure nothing is given back twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sendwarden.checks.base import Check
from sendwarden.config import Settings
from sendwarden.policy.facts import Transaction
from sendwarden.policy.monitor import watches
from sendwarden.policy.ratelimit import (
    RULE,
    over_limit_verdict,
    suspension_reason,
    too_many_recipients_verdict,
)
from sendwarden.policy.suspension import Suspension, suspension_verdict
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.ratelimit.counter import (
    AUTOMATIC_BY,
    UNKNOWN_BUCKET,
    Decision,
    new_reservation_id,
)
from sendwarden.ratelimit.owed import OwedRefunds
from sendwarden.store import StoreError

KEEPS_QUOTA = (Action.CONTINUE, Action.ACCEPT)


class Counter(Protocol):
    """What the check needs of :class:`sendwarden.ratelimit.RecipientCounter`."""

    def reserve(
        self,
        account_id: str,
        cost: int,
        limit: int,
        suspension_reason: str = "",
        reservation: str = "",
        watch_only: bool = False,
    ) -> Decision: ...

    def refund(self, account_id: str, reservations: Mapping[str, int]) -> int: ...


@dataclass(slots=True)
class Reservations:
    """What one transaction has counted: ``{reservation id: bucket}``."""

    ids: dict[str, int] = field(default_factory=dict)
    whole_message: bool = False  # sendmail(1): every recipient reserved at once
    suspension: Suspension | None = None  # set when this transaction suspended the account


class SuspensionRecorder(Protocol):
    """Where an automatic suspension is recorded durably (the script already put it
    in effect in Redis): :class:`sendwarden.store.suspensions.DurableSuspensionStore`."""

    def recorded_automatically(self, account_id: str, suspension: Suspension) -> None: ...


class RecipientRateCheck(Check):
    name = RULE

    def __init__(
        self, counter: Counter, settings: Settings, suspensions: SuspensionRecorder | None = None
    ) -> None:
        self._counter = counter
        self._suspensions = suspensions
        self._settings = settings
        self._suspend_after = settings.ratelimit.suspend_after
        self._suspend_period = settings.ratelimit.suspend_period
        self._reasons: dict[int, str] = {}
        self._owed = OwedRefunds()

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        account = txn.account
        if account is None:  # a stranger's inbound mail spends no account's quota
            return None
        reservations = self._reservations(txn)
        limit = self._settings.recipients_per_hour(account)
        if txn.client.local_submission:
            if reservations.whole_message:
                return None
            cost = len(txn.recipients)
            if cost > limit:
                return too_many_recipients_verdict(account.id, limit, cost)
        else:
            cost = 1
        if self._owed:
            self._owed.pay(self._counter.refund)
        # A watched rule suspends nobody: monitor-only mode must not stop a customer's mail.
        watched = watches(RULE, RULE, self._settings.policy.monitor_only, account)
        reservation = new_reservation_id()
        try:
            decision = self._counter.reserve(
                account.id, cost, limit, self._reason(limit), reservation, watched
            )
        except StoreError:
            # Redis may still count it. Accepted uncounted (on_store_error = "accept"):
            # a late count is right, and it is refunded with the message if that fails.
            # Otherwise the recipient is tempfailed: owe it back now.
            if self._settings.policy.on_store_error == "accept":
                reservations.ids[reservation] = UNKNOWN_BUCKET
            else:
                self._owed.add(account.id, {reservation: UNKNOWN_BUCKET})
            raise
        if decision.admitted:
            reservations.ids[reservation] = decision.bucket
            reservations.whole_message = txn.client.local_submission
            return None
        suspended_after = None
        if decision.suspended:
            suspended_after = (self._suspend_after, self._suspend_period)
            reservations.suspension = Suspension(
                reason=self._reason(limit),
                since=datetime.fromtimestamp(decision.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                by=AUTOMATIC_BY,
            )
            if self._suspensions is not None:
                self._suspensions.recorded_automatically(account.id, reservations.suspension)
        return over_limit_verdict(
            account.id, limit, decision.frees_at, decision.now, suspended_after=suspended_after
        )

    def at_eom(self, txn: Transaction) -> Verdict | None:
        """An account suspended during this transaction sends nothing more, not even
        the recipients accepted before the refusal that suspended it."""
        reservations = txn.scratch.get(self.name)
        if txn.account is None or not isinstance(reservations, Reservations):
            return None
        return suspension_verdict(txn.account.id, reservations.suspension)

    def after_verdict(self, txn: Transaction, verdict: Verdict) -> None:
        reservations = txn.scratch.pop(self.name, None)
        if (
            txn.account is None
            or not isinstance(reservations, Reservations)
            or not reservations.ids
            or verdict.action in KEEPS_QUOTA
        ):
            return
        try:
            self._counter.refund(txn.account.id, reservations.ids)
        except StoreError:  # it may still have run: paying again is safe (ids)
            self._owed.add(txn.account.id, reservations.ids)
            raise

    def pay_owed(self) -> int:
        """Give back now what earlier outages left owed (otherwise paid before the
        next reservation); returns the recipients given back. Raises StoreError."""
        return self._owed.pay(self._counter.refund) if self._owed else 0

    def _reservations(self, txn: Transaction) -> Reservations:
        reservations = txn.scratch.get(self.name)
        if not isinstance(reservations, Reservations):
            reservations = txn.scratch[self.name] = Reservations()
        return reservations

    def _reason(self, limit: int) -> str:
        reason = self._reasons.get(limit)
        if reason is None:
            reason = self._reasons[limit] = suspension_reason(
                limit, self._suspend_after, self._suspend_period
            )
        return reason
