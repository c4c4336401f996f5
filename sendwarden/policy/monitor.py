"""Monitor-only mode, decided once for every rule: a refusal from a watched rule is
recorded as ``monitor`` and the mail passes. Pure: names and settings in, yes or no out.

A rule is watched when ``policy.monitor_only`` names it, or names the check that
raised it (``identity`` covers forged-sender, impersonation, ...), or when the
sending account has ``monitor_only = true``. Store failures and internal errors are
never "watched": they say nothing about the customer's mail.
"""

from __future__ import annotations

from collections.abc import Collection

from sendwarden.config import Account
from sendwarden.policy import (
    attachments,
    consent,
    forged_headers,
    identity,
    ratelimit,
    relay,
    suspension,
    unknown,
)
from sendwarden.policy.verdict import Action, Verdict

#: Checks, by the name they run under, and the rules each can raise.
CHECK_RULES: dict[str, frozenset[str]] = {
    suspension.RULE: frozenset({suspension.RULE}),
    relay.RULE: frozenset({relay.RULE}),
    unknown.RULE: frozenset({unknown.RULE}),
    ratelimit.RULE: frozenset({ratelimit.RULE}),
    "identity": frozenset(
        {
            identity.RULE_FORGED_SENDER,
            identity.RULE_IMPERSONATION,
            identity.RULE_MALFORMED,
            forged_headers.RULE,
        }
    ),
    attachments.RULE: frozenset({attachments.RULE, attachments.DEPTH_RULE}),
    "consent": frozenset({consent.RULE_CONSENT, consent.RULE_UNSUBSCRIBE, consent.RULE_NO_ACCOUNT}),
}

#: Every name ``policy.monitor_only`` accepts.
MONITORABLE: frozenset[str] = frozenset(CHECK_RULES).union(*CHECK_RULES.values())

#: The verdict label a watched refusal is logged and counted under.
MONITOR = "monitor"


def is_monitored(
    verdict: Verdict, check: str, watched: Collection[str], account: Account | None
) -> bool:
    """Whether this refusal is only to be recorded: the mail passes."""
    if verdict.action not in (Action.REJECT, Action.TEMPFAIL):
        return False
    return watches(verdict.rule or check, check, watched, account)


def watches(rule: str, check: str, watched: Collection[str], account: Account | None) -> bool:
    """Whether ``rule`` (raised by ``check``) only watches this account's mail. Also asked
    by a check whose refusal has a side effect (the rate limit's automatic suspension)."""
    if rule not in MONITORABLE:
        return False  # store-unavailable, internal errors: not a judgement of the mail
    if account is not None and account.monitor_only:
        return True
    return rule in watched or check in watched
