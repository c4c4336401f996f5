"""Unlisted senders refused at MAIL when ``policy.unknown_senders = "refuse"`` (pure)."""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.config import UnknownSenders
from sendwarden.policy.facts import Transaction
from sendwarden.policy.unknown import RULE, unknown_sender_verdict
from sendwarden.policy.verdict import Verdict


class UnknownSenderCheck(Check):
    name = RULE
    answers_before_queue = True

    def __init__(self, mode: UnknownSenders, own_login: str = "") -> None:
        self._mode = mode
        self._own_login = own_login

    def at_mail(self, txn: Transaction) -> Verdict | None:
        return unknown_sender_verdict(txn, self._mode, self._own_login)


def unknown_sender_checks(mode: UnknownSenders, own_login: str = "") -> list[Check]:
    """The check only when it can fire: "limit" needs no step of its own.
    ``own_login``: the alert service's login (``alerts.smtp_login``), never refused."""
    return [UnknownSenderCheck(mode, own_login)] if mode == "refuse" else []
