"""Recipient rate limit: reserve at RCPT, give back when the message is not accepted.

An SMTP message costs two Redis round trips whatever its number of recipients:
MAIL reserves a first batch of up to ``FIRST_BATCH`` recipients (as many as fit,
maybe none; never more than 2 % of the account's limit) and learns how much room
the account's window has left; the same script refuses a suspended account there.
The RCPTs use the batch up, then are accepted provisionally within that room,
without a round trip. The end of message, in one script, gives back what the batch
did not use and reserves the provisional recipients all at once (and counts and
records the message's distinct recipients for the consent rule). When they no
longer fit there (other transactions of the account took the room meanwhile), the
message is deferred (451 4.7.1) and everything it reserved is given back: the
client sends it again later, nothing is lost. Only an account at its limit costs
more: once the room seen is used up, each RCPT reserves for real (the provisional
recipients with it), and is deferred when the window is full. The count stays
exact: never more than the limit is counted, and a recipient (or message) is
deferred only when the window is full or other transactions of the account hold
reservations they have not used yet.
sendmail(1) mail is judged whole at end of message: all its recipients are
reserved in one round trip (the MAIL checks' turn, which also reads the
suspension), or none. A transaction that ends without being accepted (refused
later, aborted, connection lost) returns what it reserved, by reservation id, to
the very buckets it reserved in; when Redis is down at that moment, the refund is
owed and paid before the next reservation. A reservation whose answer never came
(Redis timed out) may still be counted late: unless its recipient was accepted
anyway (``on_store_error = "accept"``) it is owed back at once, and the refund
script's ids make sure nothing is given back twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sendwarden.checks.base import Check
from sendwarden.checks.suspension import refuse_suspended
from sendwarden.config import Settings
from sendwarden.decisionlog import add_note
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
    Settlement,
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
        extra: tuple[str, int, int] | None = None,
        fill: int = 0,
    ) -> Settlement: ...


class SuspensionCache(Protocol):
    """The MAIL-time suspension cache, told what each reservation saw."""

    def seen_unsuspended(self, account_id: str) -> None: ...
    def seen_suspended(self, account_id: str) -> None: ...
    def seen_absent(self, account_id: str) -> None: ...
    def take_fill(self, account_id: str) -> int: ...


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
    # Room the window had when a script last looked, less what was accepted since
    # beyond the batch; and those recipients, accepted provisionally (end of message
    # reserves them, or defers the message).
    room: int = 0
    provisional: int = 0


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
        """The first batch, and the account's suspension, in one round trip. For
        sendmail(1) mail (whose MAIL checks run at end of message, recipients known)
        the whole message is reserved here, in the round trip that reads the
        suspension."""
        account = txn.account
        if account is None:
            return None
        limit = self._settings.recipients_per_hour(account)
        reservations = self._reservations(txn)
        if txn.client.local_submission:
            cost = len(txn.recipients)
            if not cost or reservations.whole_message:
                return None
            if cost > limit:
                return too_many_recipients_verdict(account.id, limit, cost)
            return self._reserve(txn, reservations, cost, cost, limit)
        return self._reserve(txn, reservations, 0, self._batch(0, limit), limit)

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        account = txn.account
        if account is None:  # a stranger's inbound mail spends no account's quota
            return None
        reservations = self._reservations(txn)
        if txn.client.local_submission:
            return None  # reserved whole by the MAIL checks' turn (or Redis failed there)
        if reservations.unused:  # reserved by this transaction's batch already
            reservations.unused -= 1
            return None
        if reservations.room > 0:  # room the window had: end of message reserves it
            reservations.room -= 1
            reservations.provisional += 1
            return None
        # The room seen is used up: reserve for real, the provisional ones with this one.
        limit = self._settings.recipients_per_hour(account)
        cost = reservations.provisional + 1
        want = reservations.provisional + self._batch(len(reservations.ids), limit)
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
        if self._suspension_cache is not None:
            if decision.suspension == NOT_SUSPENDED:
                self._suspension_cache.seen_unsuspended(account.id)
            elif not decision.suspension:  # Redis has no entry: the durable store decides
                self._suspension_cache.seen_absent(account.id)
        if decision.admitted:
            if decision.granted:
                reservations.ids[reservation] = decision.bucket
            reservations.whole_message = txn.client.local_submission
            if not txn.client.local_submission:
                reservations.room = max(0, limit - decision.used)
                if cost:  # the provisional recipients are counted now
                    reservations.provisional = 0
                if decision.granted:
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
        return self._settle(txn, reservations if isinstance(reservations, Reservations) else None)

    def _settle(self, txn: Transaction, reservations: Reservations | None) -> Verdict | None:
        """One round trip: give back the batch's unused recipients (assuming the message
        is accepted; a refusal refunds the rest), reserve the provisional ones (or defer
        the message when they no longer fit), cache "not suspended" for an account the
        durable store was just asked about, and count and record the message's distinct
        recipients for the consent rule, when there is any of that to do."""
        account = txn.account
        assert account is not None
        keep: tuple[str, int, int] | None = None
        extra: tuple[str, int, int] | None = None
        limit = 0
        if reservations is not None:
            if reservations.batch and reservations.unused:
                reservation_id, bucket, granted = reservations.batch
                keep = (reservation_id, bucket, granted - reservations.unused)
            if reservations.provisional:
                limit = self._settings.recipients_per_hour(account)
                extra = (new_reservation_id(), reservations.provisional, limit)
        recent = None
        if self._recent is not None and txn.recipients and is_outbound(txn):
            recent = self._recent.batch(account.id, txn.recipients)
        fill = self._suspension_cache.take_fill(account.id) if self._suspension_cache else 0
        if keep is None and recent is None and extra is None and not fill:
            return None
        if self._owed:
            self._owed.pay(self._counter.refund)
        try:
            settled = self._counter.settle(account.id, keep, recent, extra, fill)
        except StoreError:
            if extra is not None and reservations is not None:
                # It may have been counted: kept if the message is accepted anyway
                # (on_store_error = "accept"), refunded with the rest otherwise.
                reservations.ids[extra[0]] = UNKNOWN_BUCKET
            raise
        if reservations is not None:
            reservations.unused = 0
            if extra is not None:
                reservations.provisional = 0
                if settled.admitted:
                    reservations.ids[extra[0]] = settled.bucket
        if not settled.admitted:
            return self._refused_at_end(txn, settled, limit)
        if recent is not None:
            txn.recent_recipients = settled.distinct
        return None

    def _refused_at_end(self, txn: Transaction, settled: Settlement, limit: int) -> Verdict:
        """The provisional recipients no longer fit (or the account was suspended
        meanwhile): the whole message is deferred, and what it reserved given back."""
        account = txn.account
        assert account is not None
        if settled.suspension and settled.suspension != NOT_SUSPENDED:
            if self._suspension_cache is not None:
                self._suspension_cache.seen_suspended(account.id)
            verdict = refuse_suspended(txn, account.id, parse_suspension(settled.suspension))
            assert verdict is not None
            return verdict
        add_note(
            txn,
            f"{settled.used} of {limit} recipients counted at end of message: the "
            "recipients accepted beyond the batch no longer fit; the message is deferred",
        )
        return over_limit_verdict(account.id, limit, None, 0.0)  # no time: frees_at unknown

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

    def close(self) -> None:
        close = getattr(self._counter, "close", None)
        if callable(close):
            close()

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
