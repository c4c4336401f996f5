"""Risk alerts for accounts: which refusals count (the recorder, on an in-memory
store) and what the abuse desk is told (pure findings)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import pytest

from sendwarden.alerts.findings import ACCOUNT_AT_RISK, ACCOUNT_SUSPENDED
from sendwarden.alerts.risk import (
    RISK_RULES,
    AccountRisk,
    RiskRecorder,
    describe_refusals,
    risk_findings,
)
from sendwarden.config import Account
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import CONTINUE, Action, Verdict
from sendwarden.store import StoreError

ACME = Account(id="acme", logins=("alice@acme.example",), domains=("acme.example",))
OUTSIDE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example")
TRUSTED = Client(address=ipaddress.ip_address("127.0.0.1"), hostname="localhost")
LOCAL = Client(address=None, local_submission=True)
SUSPENSION = Suspension(reason="limit reached 3 times", since="2024-05-01T10:00:00Z", by="alice")


class MemoryRefusals:
    """The recorder's store in memory; ``down`` makes it fail like Redis would."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, int]] = []
        self.down = False

    def record(self, account_id: str, rule: str, count: int = 1) -> None:
        if self.down:
            raise StoreError("redis", "connection refused")
        self.recorded.append((account_id, rule, count))

    def refusals(self, account_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for account_id, rule, count in self.recorded:
            if account_id in account_ids:
                by_rule = counts.setdefault(account_id, {})
                by_rule[rule] = by_rule.get(rule, 0) + count
        return counts


def logged_in() -> Transaction:
    return Transaction(
        client=OUTSIDE, login="alice@acme.example", account=ACME, account_source="login"
    )


def refused(rule: str, action: Action = Action.REJECT) -> Verdict:
    return Verdict(action, rule, "550" if action is Action.REJECT else "451", "5.7.1", "no")


# -- the recorder -------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(RISK_RULES))
def test_every_risk_rule_counts_when_rejected_or_deferred(rule: str) -> None:
    store = MemoryRefusals()
    recorder = RiskRecorder(store)
    recorder.observe(logged_in(), "eom", refused(rule, Action.REJECT))
    recorder.observe(logged_in(), "rcpt", refused(rule, Action.TEMPFAIL))
    assert store.recorded == [("acme", rule, 1), ("acme", rule, 1)]


def test_risk_rules_leave_out_refusals_that_are_no_blacklisting_risk() -> None:
    assert "recipient-rate" in RISK_RULES and "bulk-unsubscribe" in RISK_RULES
    for rule in (
        "relay",
        "store-unavailable",
        "aborted",
        "attachment-size",
        "mime-depth",
        "bulk-no-account",
    ):
        assert rule not in RISK_RULES


@pytest.mark.parametrize(
    "verdict",
    [
        CONTINUE,
        Verdict(Action.ACCEPT),
        Verdict(Action.DISCARD, rule="aborted"),
        Verdict(Action.DISCARD, rule="recipient-rate"),  # not a refusal the client sees
        refused("relay"),
        refused("store-unavailable", Action.TEMPFAIL),
        refused("attachment-size"),
        refused("mime-depth"),
    ],
)
def test_accepted_mail_and_other_refusals_record_nothing(verdict: Verdict) -> None:
    store = MemoryRefusals()
    RiskRecorder(store).observe(logged_in(), "eom", verdict)
    assert store.recorded == []


def test_senders_without_an_account_are_not_counted() -> None:
    store = MemoryRefusals()
    RiskRecorder(store).observe(
        Transaction(client=TRUSTED, trusted=True), "eom", refused("forged-sender")
    )
    assert store.recorded == []


def test_an_outside_client_claiming_a_customer_domain_does_not_count_against_it() -> None:
    store = MemoryRefusals()
    forged = Transaction(client=OUTSIDE, mail_from="x@acme.example")  # a stranger: no account
    RiskRecorder(store).observe(forged, "rcpt", refused("recipient-rate", Action.TEMPFAIL))
    assert store.recorded == []


def test_a_trusted_host_no_account_lists_counts_as_its_own_account() -> None:
    store = MemoryRefusals()
    web_server = Transaction(
        client=TRUSTED,
        trusted=True,
        mail_from="shop@acme.example",  # a claim: it picks no account
        account=AccountDirectory([ACME]).get("host:127.0.0.1"),
        account_source="trusted-network",
    )
    RiskRecorder(store).observe(web_server, "eom", refused("bulk-consent"))
    assert store.recorded == [("host:127.0.0.1", "bulk-consent", 1)]


def test_a_sendmail_message_over_the_limit_counts_each_recipient() -> None:
    store = MemoryRefusals()
    txn = Transaction(
        client=LOCAL,
        trusted=True,
        uid=1001,
        account=ACME,
        account_source="uid",
        recipients=["a@x.example", "b@x.example", "c@x.example"],
    )
    RiskRecorder(store).observe(txn, "eom", refused("recipient-rate", Action.TEMPFAIL))
    assert store.recorded == [("acme", "recipient-rate", 3)]


def test_store_errors_are_swallowed_and_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sendwarden.alerts.risk")
    store = MemoryRefusals()
    recorder = RiskRecorder(store)
    store.down = True
    for _ in range(5):
        recorder.observe(logged_in(), "eom", refused("forged-sender"))  # never raises
    store.down = False
    for _ in range(3):
        recorder.observe(logged_in(), "eom", refused("forged-sender"))
    store.down = True
    recorder.observe(logged_in(), "eom", refused("forged-sender"))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert "redis is unavailable" in messages[0] and "not counted" in messages[0]
    assert "redis is available again" in messages[1]
    assert "redis is unavailable" in messages[2]
    assert store.recorded == [("acme", "forged-sender", 1)] * 3


# -- findings -----------------------------------------------------------------------


def test_below_the_threshold_nothing_is_reported() -> None:
    risk = AccountRisk("acme", {"recipient-rate": 20, "bulk-consent": 4}, None)
    assert risk.total == 24
    assert risk_findings([risk], threshold=25) == []


def test_at_the_threshold_the_account_is_at_risk() -> None:
    risks = [
        AccountRisk("quiet", {}, None),
        AccountRisk("acme", {"bulk-consent": 6, "recipient-rate": 25}, None),
    ]
    [finding] = risk_findings(risks, threshold=31)
    assert finding.key == "risk:acme"
    assert finding.kind == ACCOUNT_AT_RISK
    assert finding.subject == "Account acme was refused 31 times in the last hour"
    body = "\n".join(finding.lines)
    assert "recipient-rate: 25 recipients over the hourly limit" in body
    assert "bulk-consent: 6 bulk messages to recipients without consent" in body
    assert body.index("recipient-rate") < body.index("bulk-consent")  # most refused first
    assert "compromised password" in body and "spam campaign" in body
    assert "sendwarden account suspend acme" in body
    assert finding.facts == {
        "account": "acme",
        "refusals": {"recipient-rate": 25, "bulk-consent": 6},
        "total": 31,
        "threshold": 31,
    }


def test_threshold_zero_never_reports_refusals() -> None:
    assert risk_findings([AccountRisk("acme", {"forged-sender": 1000}, None)], threshold=0) == []


def test_a_suspended_account_is_reported_whatever_its_refusals() -> None:
    [finding] = risk_findings([AccountRisk("acme", {}, SUSPENSION)], threshold=0)
    assert finding.key == "suspended:acme"
    assert finding.kind == ACCOUNT_SUSPENDED
    assert finding.subject == "Account acme is suspended"
    assert finding.lines[:3] == (
        "Reason: limit reached 3 times",
        "Since: 2024-05-01T10:00:00Z",
        "By: alice",
    )
    assert "sendwarden account unsuspend acme" in finding.lines[-1]
    assert finding.facts == {
        "account": "acme",
        "reason": "limit reached 3 times",
        "since": "2024-05-01T10:00:00Z",
        "by": "alice",
    }


def test_an_account_both_at_risk_and_suspended_gets_both_findings() -> None:
    risk = AccountRisk("acme", {"suspended": 1}, SUSPENSION)
    findings = risk_findings([risk], threshold=1)
    assert [finding.key for finding in findings] == ["risk:acme", "suspended:acme"]
    assert findings[0].subject == "Account acme was refused 1 time in the last hour"
    assert "suspended: 1 message refused because the account is suspended" in findings[0].lines[1]


def test_refusal_descriptions() -> None:
    assert (
        describe_refusals("recipient-rate", 1)
        == "recipient-rate: 1 recipient over the hourly limit"
    )
    assert describe_refusals("impersonation", 2).startswith("impersonation: 2 messages whose")
    assert describe_refusals("something-new", 3) == "something-new: 3 refusals"
