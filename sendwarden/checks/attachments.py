"""The per-file size cap, fed the body as the MTA streams it (inbound and outbound)."""

from __future__ import annotations

from sendwarden.attachments.scanner import AttachmentScanner
from sendwarden.checks.base import Check
from sendwarden.policy.attachments import RULE, attachment_verdict
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict


class AttachmentCheck(Check):
    name = RULE
    needs_body = True

    def __init__(self, max_bytes: int, max_depth: int) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    def _scanner(self, txn: Transaction) -> AttachmentScanner:
        scanner = txn.scratch.get(self.name)
        if not isinstance(scanner, AttachmentScanner):
            scanner = txn.scratch[self.name] = AttachmentScanner(max_depth=self._max_depth)
        return scanner

    def at_header(self, txn: Transaction, name: str, value: str) -> None:
        self._scanner(txn).add_header(name, value)

    def at_body(self, txn: Transaction, chunk: bytes) -> None:
        self._scanner(txn).feed(chunk)

    def at_eom(self, txn: Transaction) -> Verdict | None:
        report = self._scanner(txn).finish()
        return attachment_verdict(report, self._max_bytes, self._max_depth, txn.account_id)
