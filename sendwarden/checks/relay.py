"""Open relay check: pure, needs no store."""

from __future__ import annotations

from collections.abc import Collection

from sendwarden.checks.base import Check
from sendwarden.policy.facts import Transaction
from sendwarden.policy.relay import RULE, relay_verdict
from sendwarden.policy.verdict import Verdict


class RelayCheck(Check):
    name = RULE
    answers_before_queue = True

    def __init__(self, local_domains: Collection[str]) -> None:
        self._local_domains = frozenset(local_domains)

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        return relay_verdict(txn, recipient, self._local_domains)
