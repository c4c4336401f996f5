"""Every decision as one JSON line: what the log, metrics and alerts are fed from."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict

DECISIONS = logging.getLogger("sendwarden.decisions")
TRACE = "_trace"  # txn.scratch key of the transaction's RuleTrace


@dataclass(slots=True)
class RuleTrace:
    """Which checks ran in a transaction, and which of them fired."""

    hits: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    monitored: list[str] = field(default_factory=list)  # rules monitor-only mode let pass

    def ran(self, check: str, fired: bool) -> None:
        """A check ran; a check that fired is never listed as passed (at RCPT it may
        pass one recipient and refuse the next)."""
        if fired:
            self.hits.append(check)
            if check in self.passed:
                self.passed.remove(check)
        elif check not in self.passed and check not in self.hits:
            self.passed.append(check)


def add_note(txn: Transaction, note: str) -> None:
    """Add a line to the decision record of this transaction (when it has one)."""
    trace = txn.scratch.get(TRACE)
    if isinstance(trace, RuleTrace):
        trace.notes.append(note)


def decision_record(
    txn: Transaction,
    stage: str,
    verdict: Verdict,
    trace: RuleTrace,
    recipient: str | None = None,
    verdict_label: str | None = None,
) -> dict[str, Any]:
    """The fields of one decision line; a plain dict so tests can assert on it.
    ``verdict_label`` overrides the verdict's action (``monitor``: a watched rule's
    refusal that was let pass; ``reply`` is then the reply it would have had)."""
    record: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "event": "decision",
        "stage": stage,
        "session": txn.session or None,
        "queue_id": txn.queue_id or None,
        "account": txn.account_id,
        "account_source": txn.account_source or None,
        "client": str(txn.client),
        "client_address": str(txn.client.address) if txn.client.address else None,
        "login": txn.login,
        "uid": txn.uid,
        "mail_from": txn.mail_from,
        "recipients": len(txn.recipients),
        # An abandoned transaction delivered nothing: not a "discard" by a rule.
        "verdict": verdict_label or ("aborted" if stage == "abort" else verdict.action.value),
        "rule": verdict.rule or None,
        "reply": verdict.reply() or None,
        "hits": trace.hits,
        "passed": trace.passed,
    }
    if recipient is not None:
        record["recipient"] = recipient
    if txn.changes.remove_recipients and stage == "eom":
        # on_missing_consent = "remove": who did not get the message, and why not
        record["removed_recipients"] = list(txn.changes.remove_recipients)
    if trace.notes:
        record["notes"] = trace.notes
    if trace.monitored:
        record["monitored"] = trace.monitored
    return record


def decisions_logged() -> bool:
    """False when ``log.decisions`` is off: then nobody reads a record, so none is built."""
    return DECISIONS.isEnabledFor(logging.INFO)


def log_decision(record: dict[str, Any]) -> None:
    DECISIONS.info("%s", json.dumps(record, ensure_ascii=False, sort_keys=False))


def configure_logging(level: str, decisions: bool, stream: Any = None) -> None:
    """Plain lines for operations, raw JSON lines for decisions, both to stderr
    (journald under systemd)."""
    stream = stream or sys.stderr
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    DECISIONS.handlers.clear()
    DECISIONS.propagate = False
    if decisions:
        raw = logging.StreamHandler(stream)
        raw.setFormatter(logging.Formatter("%(message)s"))
        DECISIONS.addHandler(raw)
    DECISIONS.setLevel(logging.INFO if decisions else logging.CRITICAL + 1)
