"""Accounts whose refused mail puts the provider's sending addresses at risk.

The milter counts, per account and rule, the refusals that say an account's mail
looks like spam to the rest of the internet (over the rate limit, forged or
impersonating senders, bulk mail without consent, ...). The counts live in Redis,
shared by every MTA host, as per-minute buckets of the rolling hour; the alert
sweep reads them for every account and turns the ones over the threshold (and the
suspended ones) into findings for the abuse desk.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from redis.cluster import RedisCluster

from sendwarden.alerts.findings import ACCOUNT_AT_RISK, ACCOUNT_SUSPENDED, Finding
from sendwarden.policy import consent, forged_headers, identity, ratelimit, suspension
from sendwarden.policy.facts import Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.ratelimit.counter import Clock, LuaScript, templated_script
from sendwarden.ratelimit.window import (
    BUCKET_SECONDS,
    MICROSECONDS,
    WINDOW_SECONDS,
    oldest_live_bucket,
)
from sendwarden.store import StoreError, StoreHealth
from sendwarden.store.redis import account_key, redis_errors
from sendwarden.store.suspensions import SuspensionStore

log = logging.getLogger(__name__)

#: Refusals that say the account's own mail is a blacklisting risk. Not ``relay``: an
#: outside client forging a customer's envelope domain is attributed to that customer
#: by sender domain, and must not count against them. Not the attachment cap or MIME
#: depth (no listing follows from them), nor store failures and aborts (nobody's fault).
RISK_RULES: frozenset[str] = frozenset(
    {
        ratelimit.RULE,
        suspension.RULE,
        identity.RULE_FORGED_SENDER,
        identity.RULE_IMPERSONATION,
        identity.RULE_MALFORMED,
        forged_headers.RULE,
        consent.RULE_CONSENT,
        consent.RULE_UNSUBSCRIBE,
    }
)

REFUSALS = frozenset({Action.REJECT, Action.TEMPFAIL})

#: What each rule's refusals mean to a support agent: (one, many).
_DESCRIPTIONS: Mapping[str, tuple[str, str]] = {
    ratelimit.RULE: (
        "recipient over the hourly limit",
        "recipients over the hourly limit",
    ),
    suspension.RULE: (
        "message refused because the account is suspended",
        "messages refused because the account is suspended",
    ),
    identity.RULE_FORGED_SENDER: (
        "message with a sender address the account does not own",
        "messages with a sender address the account does not own",
    ),
    identity.RULE_IMPERSONATION: (
        "message whose sender name shows someone else's address",
        "messages whose sender name shows someone else's address",
    ),
    identity.RULE_MALFORMED: (
        "message with an unreadable From or Sender header",
        "messages with an unreadable From or Sender header",
    ),
    forged_headers.RULE: (
        "message with forged provider headers (Received, Authentication-Results)",
        "messages with forged provider headers (Received, Authentication-Results)",
    ),
    consent.RULE_CONSENT: (
        "bulk message to recipients without consent",
        "bulk messages to recipients without consent",
    ),
    consent.RULE_UNSUBSCRIBE: (
        "bulk message without an unsubscribe link (List-Unsubscribe)",
        "bulk messages without an unsubscribe link (List-Unsubscribe)",
    ),
}


class RefusalStore(Protocol):
    """What the recorder and the sweep need of :class:`RiskStore`."""

    def record(self, account_id: str, rule: str, count: int = 1) -> None: ...

    def refusals(self, account_ids: Sequence[str]) -> dict[str, dict[str, int]]: ...


class RiskStore:
    """Refusals per account and rule in the rolling hour, in Redis shared by every MTA
    host (per-minute buckets in one hash per account, time from the script's TIME, one
    hash tag per account). Raises StoreError when Redis does not answer."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "sw",
        *,
        clock: Clock | None = None,
        window_seconds: int = WINDOW_SECONDS,
        bucket_seconds: int = BUCKET_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock  # tests only: the scripts take Redis's own time otherwise
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self._record = LuaScript(
            client,
            templated_script(
                "risk.lua", {"window": window_seconds, "bucket": bucket_seconds}, __package__
            ),
        )

    def key(self, account_id: str) -> str:
        return account_key(self._prefix, account_id, "risk")

    def record(self, account_id: str, rule: str, count: int = 1) -> None:
        """Count ``count`` refusals of the account by ``rule`` now (one round trip)."""
        now = self._clock() if self._clock else ""
        with redis_errors(f"counting a refusal of account {account_id}"):
            self._record([self.key(account_id)], rule, count, now)

    def refusals(self, account_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{account: {rule: refusals in the rolling hour}}`` for the accounts that
        have any, read in one round trip."""
        if not account_ids:
            return {}
        with redis_errors("reading the refusal counts of the accounts"):
            # A cluster pipeline refuses keyless commands (TIME): ask for it apart there.
            clustered = isinstance(self._client, RedisCluster)
            pipe = self._client.pipeline(transaction=False)
            if not clustered:
                pipe.time()
            for account_id in account_ids:
                pipe.hgetall(self.key(account_id))
            replies = pipe.execute()
            if clustered:
                replies.insert(0, self._client.time())
        seconds, micros = replies[0]
        now_us = self._clock() if self._clock else int(seconds) * MICROSECONDS + int(micros)
        oldest = oldest_live_bucket(now_us, self.window_seconds, self.bucket_seconds)
        counts: dict[str, dict[str, int]] = {}
        for account_id, fields in zip(account_ids, replies[1:], strict=True):
            by_rule = _live_counts(typing.cast(dict[bytes, bytes], fields), oldest)
            if by_rule:
                counts[account_id] = by_rule
        return counts

    def reset(self, account_id: str) -> None:
        """Forget the account's refusals (after staff have dealt with the cause)."""
        with redis_errors(f"resetting the refusal counts of account {account_id}"):
            self._client.delete(self.key(account_id))


def _live_counts(fields: Mapping[bytes, bytes], oldest_bucket: int) -> dict[str, int]:
    """Sum the ``bucket:rule`` fields still inside the window, by rule."""
    by_rule: dict[str, int] = {}
    for name, value in fields.items():
        bucket, _, rule = name.decode(errors="replace").partition(":")
        if not bucket.isdigit() or int(bucket) < oldest_bucket or not rule:
            continue
        count = int(value)
        if count > 0:
            by_rule[rule] = by_rule.get(rule, 0) + count
    return by_rule


class RiskRecorder:
    """Counts an attributed account's refusals by a RISK_RULES rule (action REJECT or
    TEMPFAIL). A pipeline observer: it never slows mail beyond the Redis timeout and
    never breaks it; accepted mail costs nothing.

    Only outbound mail counts (a logged-in sender, a known local user or network, or a
    trusted network): mail from an outside client belongs to no account.
    """

    def __init__(self, store: RefusalStore) -> None:
        self._store = store
        self._outage = StoreHealth(log, "refusals are not counted for risk alerts until it is back")

    def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        if verdict.rule not in RISK_RULES or verdict.action not in REFUSALS:
            return
        account = txn.account
        if account is None or not (txn.identified or txn.trusted):
            return
        try:
            self._store.record(account.id, verdict.rule, refused_count(txn, stage, verdict))
        except StoreError as error:
            self._outage.failed(error)
            return
        self._outage.succeeded({"redis"})


def refused_count(txn: Transaction, stage: str, verdict: Verdict) -> int:
    """Refusals one decision stands for: a rate-limit refusal of a whole sendmail(1)
    message refuses all its recipients, as many as SMTP would have refused one by one."""
    if verdict.rule == ratelimit.RULE and stage != "rcpt":
        return max(1, len(txn.recipients))
    return 1


@dataclass(frozen=True)
class AccountRisk:
    """What the sweep knows about one account right now."""

    account: str
    refusals: Mapping[str, int]  # rule -> count in the rolling hour
    suspension: Suspension | None

    @property
    def total(self) -> int:
        return sum(self.refusals.values())


def account_risks(
    store: RefusalStore, suspensions: SuspensionStore, account_ids: Sequence[str]
) -> list[AccountRisk]:
    """Every account, in the given order; raises StoreError (the sweep cannot tell)."""
    refusals = store.refusals(account_ids)
    return [
        AccountRisk(account_id, refusals.get(account_id, {}), suspensions.get(account_id))
        for account_id in account_ids
    ]


def risk_findings(risks: Sequence[AccountRisk], threshold: int) -> list[Finding]:
    """Accounts refused at least ``threshold`` times in the hour (0: never), and
    suspended accounts, as findings for the abuse desk."""
    findings: list[Finding] = []
    for risk in risks:
        if threshold > 0 and risk.total >= threshold:
            findings.append(_at_risk(risk, threshold))
        if risk.suspension is not None:
            findings.append(_suspended(risk.account, risk.suspension))
    return findings


def describe_refusals(rule: str, count: int) -> str:
    """``bulk-consent: 6 bulk messages to recipients without consent``."""
    one, many = _DESCRIPTIONS.get(rule, ("refusal", "refusals"))
    return f"{rule}: {count} {one if count == 1 else many}"


def _at_risk(risk: AccountRisk, threshold: int) -> Finding:
    account, total = risk.account, risk.total
    by_count = sorted(risk.refusals.items(), key=lambda item: (-item[1], item[0]))
    return Finding(
        key=f"risk:{account}",
        kind=ACCOUNT_AT_RISK,
        subject=f"Account {account} was refused {_times(total)} in the last hour",
        lines=(
            f"Mail from account {account} was refused {_times(total)} in the last hour "
            f"(alert threshold {threshold}); mail like this gets the provider's sending "
            "addresses blacklisted:",
            *(f"  {describe_refusals(rule, count)}" for rule, count in by_count),
            "Check the account for a compromised password (a login or script sending spam) "
            "or a spam campaign, and contact the customer.",
            f"`sendwarden account suspend {account}` stops all its mail until the cause is fixed.",
        ),
        facts={
            "account": account,
            "refusals": dict(by_count),
            "total": total,
            "threshold": threshold,
        },
    )


def _suspended(account: str, suspension: Suspension) -> Finding:
    return Finding(
        key=f"suspended:{account}",
        kind=ACCOUNT_SUSPENDED,
        subject=f"Account {account} is suspended",
        lines=(
            f"Reason: {suspension.reason}",
            f"Since: {suspension.since}",
            f"By: {suspension.by or 'not recorded'}",
            "No mail from the account is accepted while it is suspended. Once the cause is "
            f"fixed, `sendwarden account unsuspend {account}` lifts the suspension.",
        ),
        facts={
            "account": account,
            "reason": suspension.reason,
            "since": suspension.since,
            "by": suspension.by,
        },
    )


def _times(count: int) -> str:
    return "1 time" if count == 1 else f"{count} times"
