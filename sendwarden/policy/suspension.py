"""Suspended accounts send nothing until staff lift the suspension."""

from __future__ import annotations

from dataclasses import dataclass

from sendwarden.policy.verdict import Verdict, reject

RULE = "suspended"


@dataclass(frozen=True, slots=True)
class Suspension:
    """Why and since when an account is suspended (as recorded by staff or the rate limiter)."""

    reason: str
    since: str  # ISO 8601 UTC
    by: str = ""


#: Who the rate limiter records as the suspender: its reason is about the customer's own
#: sending, so the customer may read it. Any other suspender is staff, whose reason is an
#: internal note (it may name a complaint, a ticket, a colleague) and stays in the log.
RATE_LIMIT_SUSPENDER = "sendwarden rate limit"


def suspension_verdict(account_id: str, suspension: Suspension | None) -> Verdict | None:
    """550 5.7.1 at MAIL for a suspended account. The customer learns that and since
    when, and what to do; a staff reason is not theirs to read (it goes to the log)."""
    if suspension is None:
        return None
    if suspension.by == RATE_LIMIT_SUSPENDER:
        why = f" because {suspension.reason}"
    else:
        why = " by the provider"
    return reject(
        RULE,
        "550",
        "5.7.1",
        f"Account {account_id} is suspended{why} (since {suspension.since}): no mail is "
        "accepted from it. Contact the provider's support to have the suspension lifted.",
    )
