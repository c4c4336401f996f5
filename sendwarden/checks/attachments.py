"""The per-file size cap, fed the body as the MTA streams it (inbound and outbound)."""

from __future__ import annotations

from sendwarden.attachments.fragments import FragmentStore
from sendwarden.attachments.scanner import AttachmentScanner
from sendwarden.checks.base import Check
from sendwarden.decisionlog import add_note
from sendwarden.policy.attachments import (
    RULE,
    MessagePartialAction,
    attachment_verdict,
    fragments_verdict,
)
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict


class AttachmentCheck(Check):
    name = RULE
    needs_body = True

    def __init__(
        self,
        max_bytes: int,
        max_depth: int,
        message_partial: MessagePartialAction = "refuse",
        fragments: FragmentStore | None = None,
    ) -> None:
        if message_partial == "count" and fragments is None:
            raise ValueError('message_partial = "count" needs a fragment store')
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._message_partial = message_partial
        self._fragments = fragments

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
        for reason in report.ambiguities:
            add_note(txn, f"{RULE}: ambiguous MIME: {reason}")
        verdict = attachment_verdict(
            report, self._max_bytes, self._max_depth, txn.account_id, self._message_partial
        )
        if verdict is not None or self._fragments is None:
            return verdict
        for fragment in report.fragments:
            # Recorded before the verdict is final: a fragment refused later still
            # counts, and sending it again replaces its entry (it never counts twice).
            tally = self._fragments.add(txn.account_id, fragment)
            add_note(
                txn,
                f"{RULE}: message/partial {fragment.message_id!r} fragment {fragment.number} "
                f"of {tally.declared_total or '?'}: {tally.fragments} seen, {tally.bytes} bytes",
            )
            verdict = fragments_verdict(fragment, tally.bytes, self._max_bytes, txn.account_id)
            if verdict is not None:
                return verdict
        return None
