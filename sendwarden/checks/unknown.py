"""Unlisted senders refused at MAIL when ``policy.unknown_senders = "refuse"`` (pure)."""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.config import UnknownSenders
from sendwarden.policy.facts import Transaction
from sendwarden.policy.unknown import RULE, unknown_sender_verdict
from sendwarden.policy.verdict import Verdict


class UnknownSenderCheck(Check):
    name = RULE

    def __init__(self, mode: UnknownSenders) -> None:
        self._mode = mode

    def at_mail(self, txn: Transaction) -> Verdict | None:
        return unknown_sender_verdict(txn, self._mode)


def unknown_sender_checks(mode: UnknownSenders) -> list[Check]:
    """The check only when it can fire: "limit" needs no step of its own."""
    return [UnknownSenderCheck(mode)] if mode == "refuse" else []
