"""In-memory stand-ins for the pure-core and adapter unit tests (no I/O)."""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.policy.facts import Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import Verdict
from sendwarden.store import StoreError, answered


class MemorySuspensions:
    def __init__(self) -> None:
        self.suspended: dict[str, Suspension] = {}
        self.down = False

    def get(self, account_id: str) -> Suspension | None:
        if self.down:
            raise StoreError("redis", "connection refused")
        answered("redis")  # as the real stores do: the pipeline's health hears of it
        return self.suspended.get(account_id)

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        self.suspended[account_id] = suspension

    def lift(self, account_id: str, by: str = "", reason: str = "") -> bool:
        return self.suspended.pop(account_id, None) is not None


class RecordingCheck(Check):
    """Records the hooks the pipeline calls, to test the pipeline's sequencing."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def at_mail(self, txn: Transaction) -> Verdict | None:
        self.calls.append(("mail", txn.account_id or ""))
        return None

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        self.calls.append(("rcpt", recipient))
        return None

    def at_eom(self, txn: Transaction) -> Verdict | None:
        self.calls.append(("eom", ""))
        return None

    def after_verdict(self, txn: Transaction, verdict: Verdict) -> None:
        self.calls.append(("after", verdict.action.value))
