"""Runs the checks stage by stage, records every decision, and maps storage
failures to ``on_store_error``. Adapters (milter, tests) drive it; it does no
protocol work of its own."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from sendwarden import metrics
from sendwarden.checks.base import Check
from sendwarden.config import Settings
from sendwarden.decisionlog import TRACE as TRACE  # re-exported: checks import it from here
from sendwarden.decisionlog import RuleTrace, decision_record, decisions_logged, log_decision
from sendwarden.policy.accounts import AccountDirectory, is_listed, is_trusted
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.monitor import MONITOR, is_monitored
from sendwarden.policy.verdict import CONTINUE, Action, Verdict, account_label, tempfail
from sendwarden.store import StoreError, StoreHealth, watching

log = logging.getLogger(__name__)

#: What an abandoned transaction ends with: nothing is delivered, so the checks give
#: back what they counted; the decision log says "aborted", not "discard".
ABORTED = Verdict(Action.DISCARD, rule="aborted")


#: Session ids need no secrecy: a generator seeded once from the system, not a
#: system call (and a hand-over of the GIL) per connection.
_session_ids = random.Random(os.urandom(16))


def new_session_id() -> str:
    """A short random id for one SMTP session (unique enough to grep a day's log)."""
    return f"{_session_ids.getrandbits(48):012x}"


STORE_RULE = "store-unavailable"
STORE_FAILED = "_store_failed"  # txn.scratch: the backends that failed in this transaction
ANSWERED = "_store_answered"  # txn.scratch: the backends that answered in this transaction


class DecisionObserver(Protocol):
    """Told of every decision the log records (a refused recipient, a finished
    message); feeds metrics and alerts. Runs on the MTA's time: keep it short."""

    def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None: ...


@runtime_checkable
class MonitorObserver(Protocol):
    """Also told of refusals that monitor-only mode let pass (``observe`` is not: the
    mail was not refused, so refusal counts and alerts must not see them)."""

    def observe_monitored(self, txn: Transaction, stage: str, verdict: Verdict) -> None: ...


class Pipeline:
    """The checks of one configuration, in order. Safe to share between threads."""

    def __init__(
        self,
        settings: Settings,
        checks: Sequence[Check],
        directory: AccountDirectory | None = None,
        observers: Sequence[DecisionObserver] = (),
    ) -> None:
        self.settings = settings
        self.checks = tuple(checks)
        self.observers = tuple(observers)
        self.monitor_observers = tuple(o for o in observers if isinstance(o, MonitorObserver))
        self.watched = frozenset(settings.policy.monitor_only)
        self.directory = directory or AccountDirectory(settings.accounts)
        self.needs_body = any(check.needs_body for check in self.checks)
        # Per header, body chunk and recipient only the checks that act there are
        # called (1 of 7 checks reads headers, 2 recipients): the others' hooks are
        # Check's no-ops. Every check still runs at MAIL and end of message, so the
        # decision record lists the same checks as passed.
        self._header_checks = _acting(self.checks, "at_header")
        self._body_checks = tuple(check for check in self.checks if check.needs_body)
        self._rcpt_checks = _acting(self.checks, "at_rcpt")
        self.health = StoreHealth(log, "on_store_error decides until it is back")

    # -- transaction life cycle -------------------------------------------------

    def begin(
        self,
        client: Client,
        *,
        login: str | None,
        mail_from: str,
        queue_id: str = "",
        session: str = "",
    ) -> Transaction:
        """A new transaction at MAIL FROM, with trust and (for SMTP) the account resolved.
        ``session`` names the SMTP session (a new one when not given)."""
        txn = Transaction(
            client=client,
            trusted=client.local_submission
            or is_trusted(client.address, self.settings.policy.trusted_networks),
            login=login or None,
            uid=client.uid,
            queue_id=queue_id,
            session=session or new_session_id(),
            mail_from=mail_from,
        )
        txn.scratch[TRACE] = RuleTrace()
        if not client.local_submission:
            self._resolve_account(txn)
        return txn

    def mail(self, txn: Transaction) -> Verdict:
        """MAIL FROM. Local submissions are judged whole at end of message."""
        if txn.client.local_submission:
            return CONTINUE
        started = time.perf_counter()
        verdict = self._finish_if_final(
            txn, "mail", self._run(txn, "mail", lambda check: check.at_mail(txn))
        )
        _timed("mail", started)
        return verdict

    def rcpt(self, txn: Transaction, recipient: str, queue_id: str = "") -> Verdict:
        """RCPT TO: an accepted recipient is added to the transaction. ``queue_id`` is
        the MTA's, if it has one by now (logged from then on)."""
        if queue_id and not txn.queue_id:
            txn.queue_id = queue_id
        if not txn.client.local_submission:
            started = time.perf_counter()
            verdict = self._run(
                txn,
                "rcpt",
                lambda check: check.at_rcpt(txn, recipient),
                recipient,
                self._rcpt_checks,
            )
            if verdict.is_final:
                self._decided(txn, "rcpt", verdict, recipient)
                _timed("rcpt", started)
                return verdict
            _timed("rcpt", started)
        txn.recipients.append(recipient)
        return CONTINUE

    def header(self, txn: Transaction, name: str, value: str) -> None:
        txn.headers.append((name, value))
        for check in self._header_checks:
            check.at_header(txn, name, value)

    def body(self, txn: Transaction, chunk: bytes) -> None:
        for check in self._body_checks:
            check.at_body(txn, chunk)

    def eom(self, txn: Transaction) -> Verdict:
        """End of message: the final verdict, after which checks commit or give back.
        For a local submission the adapter has set ``txn.uid`` by now (None when it
        could not be read: then the unknown local sender sends)."""
        started = time.perf_counter()
        verdict = CONTINUE
        if txn.client.local_submission:
            verdict = self._local_submission_envelope(txn)
        if not verdict.is_final:
            verdict = self._run(txn, "eom", lambda check: check.at_eom(txn))
        if txn.account is not None and not is_listed(txn.account):
            self._trace(txn).notes.append(
                f"unlisted sender {txn.account.id} ({txn.account_source}): default limits"
            )
        verdict = self._finish(txn, "eom", verdict)
        _timed("eom", started)
        return verdict

    def abort(self, txn: Transaction) -> None:
        """The client gave up (RSET, QUIT, lost connection) before end of message."""
        self._finish(txn, "abort", ABORTED, log_it=bool(txn.recipients))

    # -- internals --------------------------------------------------------------

    def _resolve_account(self, txn: Transaction) -> None:
        """Only what the MTA proves picks the account (never the envelope sender)."""
        attribution = self.directory.resolve(
            login=txn.login,
            uid=txn.uid,
            client_address=txn.client.address,
            local_submission=txn.client.local_submission,
            trusted=txn.trusted,
        )
        txn.account, txn.account_source = attribution.account, attribution.source

    def _local_submission_envelope(self, txn: Transaction) -> Verdict:
        """sendmail(1): Postfix forbids per-recipient replies here, so the MAIL and RCPT
        checks run now and any refusal refuses the whole message."""
        self._resolve_account(txn)
        verdict = self._run(txn, "eom", lambda check: check.at_mail(txn))
        if verdict.is_final:
            return verdict
        for recipient in txn.recipients:
            verdict = self._run(
                txn,
                "eom",
                lambda check: check.at_rcpt(txn, recipient),  # noqa: B023 (called at once)
                recipient,
            )
            if verdict.is_final:
                return verdict
        return CONTINUE

    def _run(
        self,
        txn: Transaction,
        stage: str,
        hook: Callable[[Check], Verdict | None],
        recipient: str | None = None,
        checks: Sequence[Check] | None = None,
    ) -> Verdict:
        trace = self._trace(txn)
        with watching() as seen:  # once per stage, not per check: it is on every RCPT
            try:
                for check in self.checks if checks is None else checks:
                    try:
                        verdict = hook(check)
                    except StoreError as error:
                        self._failed(txn, error)
                        verdict = self._store_failed(txn, check, error)
                    else:
                        if verdict is not None and is_monitored(
                            verdict, check.name, self.watched, txn.account
                        ):
                            self._monitored(txn, stage, verdict, recipient)
                            verdict = None
                    trace.ran(check.name, verdict is not None and verdict.is_final)
                    if verdict is not None and verdict.is_final:
                        return verdict
                return CONTINUE
            finally:
                self._answered(txn, seen)

    def _failed(self, txn: Transaction, error: StoreError) -> None:
        txn.scratch.setdefault(STORE_FAILED, set()).add(error.backend)
        self.health.failed(error)

    @staticmethod
    def _answered(txn: Transaction, seen: set[str]) -> None:
        if seen:
            txn.scratch.setdefault(ANSWERED, set()).update(seen)

    def _store_failed(self, txn: Transaction, check: Check, error: StoreError) -> Verdict | None:
        self._trace(txn).notes.append(f"{check.name}: {error}")
        if self.settings.policy.on_store_error == "accept":
            return None
        return tempfail(
            STORE_RULE,
            "451",
            "4.3.0",
            # The customer learns what happened and that a retry will do; which store
            # failed and why is in the decision's notes and the outage log line.
            f"Temporary problem checking the sending policy for {account_label(txn.account_id)}: "
            "the message was not accepted this time. Your mail program or server should "
            "try again later; nothing else needs to be done.",
        )

    def _monitored(
        self, txn: Transaction, stage: str, verdict: Verdict, recipient: str | None
    ) -> None:
        """A watched rule would have refused: log and count it as ``monitor``; the mail
        goes on as if the rule had passed."""
        trace = self._trace(txn)
        trace.monitored.append(verdict.rule)
        if decisions_logged():
            log_decision(
                decision_record(txn, stage, verdict, trace, recipient, verdict_label=MONITOR)
            )
        recorder = metrics.current()
        if recorder is not None:
            recorder.decided(stage, verdict.rule, MONITOR)
        for observer in self.monitor_observers:
            try:
                observer.observe_monitored(txn, stage, verdict)
            except Exception:  # an observer never changes what happens to the mail
                log.exception("monitor observer %s failed", type(observer).__name__)

    def _finish_if_final(self, txn: Transaction, stage: str, verdict: Verdict) -> Verdict:
        return self._finish(txn, stage, verdict) if verdict.is_final else verdict

    def _finish(
        self, txn: Transaction, stage: str, verdict: Verdict, log_it: bool = True
    ) -> Verdict:
        with watching() as seen:
            for check in self.checks:
                try:
                    check.after_verdict(txn, verdict)
                except StoreError as error:
                    self._failed(txn, error)
                except Exception:
                    log.exception("%s failed to settle a transaction", check.name)
        self._answered(txn, seen)
        # A backend that answered in this transaction and never failed in it is up:
        # per backend, so mail that touched only Redis says nothing of the database.
        answered = txn.scratch.get(ANSWERED)
        if answered:
            self.health.succeeded(answered - txn.scratch.get(STORE_FAILED, set()))
        if log_it:
            self._decided(txn, stage, verdict)
        return verdict

    def _decided(
        self, txn: Transaction, stage: str, verdict: Verdict, recipient: str | None = None
    ) -> None:
        if decisions_logged():
            log_decision(decision_record(txn, stage, verdict, self._trace(txn), recipient))
        recorder = metrics.current()
        if recorder is not None:
            recorder.decided(stage, verdict.rule, verdict.action.value)
        for observer in self.observers:
            try:
                observer.observe(txn, stage, verdict)
            except Exception:  # an observer never changes what happens to the mail
                log.exception("decision observer %s failed", type(observer).__name__)

    @staticmethod
    def _trace(txn: Transaction) -> RuleTrace:
        trace = txn.scratch.get(TRACE)
        if not isinstance(trace, RuleTrace):
            trace = txn.scratch[TRACE] = RuleTrace()
        return trace

    def close(self) -> None:
        for check in self.checks:
            check.close()


def _acting(checks: Sequence[Check], hook: str) -> tuple[Check, ...]:
    """The checks whose class does something at ``hook`` (not Check's no-op)."""
    return tuple(
        check for check in checks if getattr(type(check), hook) is not getattr(Check, hook)
    )


def _timed(stage: str, started: float) -> None:
    """The stage's decision latency, when metrics are on."""
    recorder = metrics.current()
    if recorder is not None:
        recorder.stage_done(stage, time.perf_counter() - started)
