"""What a rule decides, as a value: the one shape every adapter renders.

A verdict carries the SMTP code, the enhanced status code and a text that says
which rule fired and for which account, so the customer reading a bounce knows
what happened without calling support.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    CONTINUE = "continue"  # no objection; later rules and stages still run
    ACCEPT = "accept"  # accept the message, skip the rest
    TEMPFAIL = "tempfail"  # 4xx: the client keeps the mail and retries
    REJECT = "reject"  # 5xx: refused for good
    DISCARD = "discard"  # accept and drop silently


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    rule: str = ""
    code: str = ""
    enhanced: str = ""
    text: str = ""

    @property
    def is_final(self) -> bool:
        """True when the verdict ends the stage (anything but CONTINUE)."""
        return self.action is not Action.CONTINUE

    def reply(self) -> str:
        """The SMTP reply line, e.g. ``550 5.7.1 text``; empty for CONTINUE/ACCEPT."""
        if not self.code:
            return ""
        return " ".join(part for part in (self.code, self.enhanced, self.text) if part)


CONTINUE = Verdict(Action.CONTINUE)


def reject(rule: str, code: str, enhanced: str, text: str) -> Verdict:
    """A permanent refusal (5xx)."""
    if not code.startswith("5"):
        raise ValueError(f"reject needs a 5xx code, got {code}")
    return Verdict(Action.REJECT, rule, code, enhanced, text)


def tempfail(rule: str, code: str, enhanced: str, text: str) -> Verdict:
    """A temporary failure (4xx): the client keeps the message and retries."""
    if not code.startswith("4"):
        raise ValueError(f"tempfail needs a 4xx code, got {code}")
    return Verdict(Action.TEMPFAIL, rule, code, enhanced, text)


def account_label(account_id: str | None) -> str:
    """How replies name the sender's account."""
    return f"account {account_id}" if account_id else "this sender (no known account)"
