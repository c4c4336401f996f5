"""The one place a verdict becomes a libmilter reply."""

from __future__ import annotations

from typing import Protocol

import Milter

from sendwarden.policy.verdict import Action, Verdict

_RETURN_CODES = {
    Action.CONTINUE: Milter.CONTINUE,
    Action.ACCEPT: Milter.ACCEPT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
    Action.REJECT: Milter.REJECT,
    Action.DISCARD: Milter.DISCARD,
}
MAX_REPLY_TEXT = 900  # SMTP reply lines stay under 1000 octets (RFC 5321 §4.5.3.1.5)


class ReplySetter(Protocol):
    def setreply(
        self, rcode: str, xcode: str | None = None, msg: str | None = None, *ml: str
    ) -> int: ...


def reply_text(text: str) -> str:
    """Reply text libmilter will send as written: one line, ASCII, '%' doubled."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "replace").decode("ascii")
    if len(flat) > MAX_REPLY_TEXT:
        flat = flat[: MAX_REPLY_TEXT - 3] + "..."
    return flat.replace("%", "%%")


def render(milter: ReplySetter, verdict: Verdict) -> int:
    """Set the SMTP reply (when the verdict has one) and return the libmilter code."""
    if verdict.code:
        milter.setreply(verdict.code, verdict.enhanced or None, reply_text(verdict.text))
    return int(_RETURN_CODES[verdict.action])
