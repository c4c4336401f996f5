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


def suspension_verdict(account_id: str, suspension: Suspension | None) -> Verdict | None:
    """550 5.7.1 at MAIL for a suspended account."""
    if suspension is None:
        return None
    return reject(
        RULE,
        "550",
        "5.7.1",
        f"Account {account_id} is suspended since {suspension.since}: {suspension.reason}. "
        "No mail is accepted from it until the provider's support lifts the suspension.",
    )
