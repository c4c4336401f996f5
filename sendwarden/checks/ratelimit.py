"""Recipient rate limit: reserve at RCPT, give back when the message is not accepted.

SMTP recipients are reserved in batches: MAIL reserves up to ``FIRST_BATCH``
recipients in one round trip (as many as fit, maybe none; never more than 2 % of
the account's limit), and the same script refuses a suspended account there; the
RCPTs use the batch up without a round trip, and a message with more recipients
reserves again at RCPT, twice as many each time (within the same 2 %). The end of
message gives back what the batches did not use, in the same round trip that
counts and records the message's distinct recipients for the consent rule; so a
message of up to ``FIRST_BATCH`` recipients costs two round trips in all. The
count stays exact: a recipient is deferred only when the window is full or other
transactions of the account hold reservations they have not used yet, and never
more than the limit is counted.
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sendwarden.checks.base import Check
from sendwarden.checks.suspension import refuse_suspended
from sendwarden.config import Settings
from sendwarden.policy.consent import is_outbound
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
    RecentBatch,
    new_reservation_id,
)
from sendwarden.ratelimit.owed import OwedRefunds
from sendwarden.store import StoreError
from sendwarden.store.suspensions import NOT_SUSPENDED, parse_suspension

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
        want: int = 0,
        watch_only: bool = False,
    ) -> Decision: ...

    def refund(self, account_id: str, reservations: Mapping[str, int]) -> int: ...

    def settle(
        self,
        account_id: str,
        reservation: tuple[str, int, int] | None,
        recent: RecentBatch | None = None,
    ) -> tuple[int, int]: ...


class SuspensionCache(Protocol):
    """The MAIL-time suspension cache, told what each reservation saw."""

    def seen_unsuspended(self, account_id: str) -> None: ...
    def seen_suspended(self, account_id: str) -> None: ...


class RecentRecipients(Protocol):
    """The consent rule's distinct-recipient counter (:mod:`sendwarden.consent.bulk`)."""

    def batch(self, account_id: str, recipients: Sequence[str]) -> RecentBatch: ...


#: Recipients the first RCPT of an SMTP message reserves (fewer for small limits).
FIRST_BATCH = 10


@dataclass(slots=True)
class Reservations:
    """What one transaction has counted: ``{reservation id: bucket}``."""

    ids: dict[str, int] = field(default_factory=dict)
    whole_message: bool = False  # sendmail(1): every recipient reserved at once
    suspension: Suspension | None = None  # set when this transaction suspended the account
    # The latest batch: (id, bucket, recipients it reserved), and how many are unused.
    batch: tuple[str, int, int] | None = None
    unused: int = 0


class SuspensionRecorder(Protocol):
    """Where an automatic suspension is recorded durably (the script already put it
    in effect in Redis): :class:`sendwarden.store.suspensions.DurableSuspensionStore`."""

    def recorded_automatically(self, account_id: str, suspension: Suspension) -> None: ...


class RecipientRateCheck(Check):
    name = RULE

    def __init__(
        self,
        counter: Counter,
        settings: Settings,
        suspensions: SuspensionRecorder | None = None,
        *,
        suspension_cache: SuspensionCache | None = None,
        recent: RecentRecipients | None = None,
    ) -> None:
        self._counter = counter
        self._suspensions = suspensions
        self._settings = settings
        self._suspension_cache = suspension_cache
        self._recent = recent
        self._suspend_after = settings.ratelimit.suspend_after
        self._suspend_period = settings.ratelimit.suspend_period
        self._reasons: dict[int, str] = {}
        self._owed = OwedRefunds()

    def at_mail(self, txn: Transaction) -> Verdict | None:
        """The first batch, and the account's suspension, in one round trip."""
        account = txn.account
        if account is None or txn.client.local_submission:
            return None  # sendmail(1) mail is reserved whole at end of message
        limit = self._settings.recipients_per_hour(account)
        return self._reserve(txn, self._reservations(txn), 0, self._batch(0, limit), limit)

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        account = txn.account
        if account is None:  # a stranger's inbound mail spends no account's quota
            return None
        reservations = self._reservations(txn)
        limit = self._settings.recipients_per_hour(account)
        if txn.client.local_submission:
            if reservations.whole_message:
                return None
            cost = want = len(txn.recipients)
            if cost > limit:
                return too_many_recipients_verdict(account.id, limit, cost)
        else:
            if reservations.unused:  # reserved by this transaction's batch already
                reservations.unused -= 1
                return None
            cost = 1
            want = self._batch(len(reservations.ids), limit)
        return self._reserve(txn, reservations, cost, want, limit)

    @staticmethod
    def _batch(earlier: int, limit: int) -> int:
        """Each batch twice the last, but never more than 2 % of the limit: what a
        transaction holds unused may defer other transactions of the account."""
        return min(FIRST_BATCH << min(earlier, 16), max(1, limit // 50))

    def _reserve(
        self, txn: Transaction, reservations: Reservations, cost: int, want: int, limit: int
    ) -> Verdict | None:
        account = txn.account
        assert account is not None
        if self._owed:
            self._owed.pay(self._counter.refund)
        # A watched rule suspends nobody: monitor-only mode must not stop a customer's mail.
        watched = watches(RULE, RULE, self._settings.policy.monitor_only, account)
        reservation = new_reservation_id()
        try:
            decision = self._counter.reserve(
                account.id, cost, limit, self._reason(limit), reservation, want, watched
            )
        except StoreError:
            # Redis may still count it. Accepted uncounted (on_store_error = "accept"):
            # a late count is right, and it is refunded with the message if that fails.
            # Otherwise the recipient is tempfailed: owe it back now.
            # (A batch at MAIL, cost 0, nobody relies on: always owed back.)
            if self._settings.policy.on_store_error == "accept" and cost:
                reservations.ids[reservation] = UNKNOWN_BUCKET
            else:
                self._owed.add(account.id, {reservation: UNKNOWN_BUCKET})
            raise
        if decision.suspension and decision.suspension != NOT_SUSPENDED:
            if self._suspension_cache is not None:
                self._suspension_cache.seen_suspended(account.id)
            return refuse_suspended(txn, account.id, parse_suspension(decision.suspension))
        if self._suspension_cache is not None and decision.suspension == NOT_SUSPENDED:
            self._suspension_cache.seen_unsuspended(account.id)
        if decision.admitted:
            if decision.granted:
                reservations.ids[reservation] = decision.bucket
            reservations.whole_message = txn.client.local_submission
            if not txn.client.local_submission and decision.granted:
                reservations.batch = (reservation, decision.bucket, decision.granted)
                reservations.unused = decision.granted - cost
            return None
        suspended_after = None
        if decision.suspended:
            if self._suspension_cache is not None:
                self._suspension_cache.seen_suspended(account.id)
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
        if txn.account is None:
            return None
        if isinstance(reservations, Reservations):
            verdict = suspension_verdict(txn.account.id, reservations.suspension)
            if verdict is not None:
                return verdict
        self._settle(txn, reservations if isinstance(reservations, Reservations) else None)
        return None

    def _settle(self, txn: Transaction, reservations: Reservations | None) -> None:
        """One round trip: give back the batch's unused recipients (assuming the message
        is accepted; a refusal refunds the rest) and count and record the message's
        distinct recipients for the consent rule, when there is either to do."""
        assert txn.account is not None
        keep: tuple[str, int, int] | None = None
        if reservations is not None and reservations.batch and reservations.unused:
            reservation_id, bucket, granted = reservations.batch
            keep = (reservation_id, bucket, granted - reservations.unused)
        recent = None
        if self._recent is not None and txn.recipients and is_outbound(txn):
            recent = self._recent.batch(txn.account.id, txn.recipients)
        if keep is None and recent is None:
            return
        _, distinct = self._counter.settle(txn.account.id, keep, recent)
        if reservations is not None:
            reservations.unused = 0
        if recent is not None:
            txn.recent_recipients = distinct

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
