"""Where a verdict becomes a libmilter reply (its text from :mod:`sendwarden.replies`)."""

from __future__ import annotations

from typing import Protocol

import Milter

from sendwarden.policy.verdict import Action, Verdict
from sendwarden.replies import reply_text

_RETURN_CODES = {
    Action.CONTINUE: Milter.CONTINUE,
    Action.ACCEPT: Milter.ACCEPT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
    Action.REJECT: Milter.REJECT,
    Action.DISCARD: Milter.DISCARD,
}


class ReplySetter(Protocol):
    def setreply(
        self, rcode: str, xcode: str | None = None, msg: str | None = None, *ml: str
    ) -> int: ...


def milter_reply_text(text: str) -> str:
    """The shared reply text, with '%' doubled: libmilter formats it."""
    return reply_text(text).replace("%", "%%")


def render(milter: ReplySetter, verdict: Verdict) -> int:
    """Set the SMTP reply (when the verdict has one) and return the libmilter code."""
    if verdict.code:
        milter.setreply(verdict.code, verdict.enhanced or None, milter_reply_text(verdict.text))
    return int(_RETURN_CODES[verdict.action])
