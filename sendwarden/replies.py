"""The one place a verdict becomes SMTP reply text, for every adapter (the milter
hands it to libmilter, the proxy writes it on the wire)."""

from __future__ import annotations

from sendwarden.policy.verdict import Verdict

MAX_REPLY_TEXT = 900  # SMTP reply lines stay under 1000 octets (RFC 5321 §4.5.3.1.5)


def reply_text(text: str) -> str:
    """Reply text as an SMTP line can carry it: one line, ASCII, bounded."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "replace").decode("ascii")
    if len(flat) > MAX_REPLY_TEXT:
        flat = flat[: MAX_REPLY_TEXT - 3] + "..."
    return flat


def smtp_reply(verdict: Verdict) -> str:
    """``550 5.7.1 text``: the full reply line of a verdict that has a code."""
    return " ".join(part for part in (verdict.code, verdict.enhanced,
                                      reply_text(verdict.text)) if part)  # fmt: skip
