"""What the sweeps hand to the alert rules: facts that are true right now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The kinds of finding (``Finding.kind``).
DNSBL_LISTING = "dnsbl-listing"
ACCOUNT_AT_RISK = "account-at-risk"
ACCOUNT_SUSPENDED = "account-suspended"
MONITORING_FAILED = "monitoring-failed"  # a sweep could not look at all
ACCOUNT_NEAR_LIMIT = "account-near-limit"  # early warning: most of the hourly limit used
ACCOUNT_SURGE = "account-surge"  # early warning: several times the usual hourly volume


@dataclass(frozen=True)
class Finding:
    """One condition the abuse desk should know about while it lasts.

    ``key`` names the condition across sweeps (``dnsbl:192.0.2.10:zen.spamhaus.org``,
    ``risk:acme``), so the rules can tell a new condition from one already reported
    and from one that has ended.
    """

    key: str
    kind: str  # one of the kinds above
    subject: str  # one line, for a mail subject or a chat message
    lines: tuple[str, ...] = ()  # the body: what was seen and what to do
    facts: Mapping[str, Any] = field(default_factory=dict)  # for the JSON webhook
