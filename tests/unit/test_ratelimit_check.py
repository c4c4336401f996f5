"""The rate-limit rule's texts, its config keys, and the check's reserve/refund
logic driven through the real Pipeline with an in-memory counter (no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest

from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import ConfigError, Settings, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.policy.ratelimit import (
    describe_moment,
    describe_period,
    over_limit_verdict,
    suspension_reason,
    too_many_recipients_verdict,
)
from sendwarden.policy.verdict import Action
from sendwarden.ratelimit.counter import Decision
from sendwarden.ratelimit.window import MICROSECONDS, BucketWindow
from sendwarden.store import StoreError
from tests.unit.fakes import MemorySuspensions

NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC
REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
LOCAL = Client(
    address=ipaddress.ip_address("127.0.0.1"), hostname="localhost", local_submission=True
)


# -- texts --------------------------------------------------------------------


def test_over_limit_reply_names_account_limit_and_when() -> None:
    verdict = over_limit_verdict("acme", 500, NOW + 12 * 60, NOW)
    assert verdict.action is Action.TEMPFAIL
    assert (verdict.code, verdict.enhanced) == ("451", "4.7.1")
    assert "Account acme has reached its limit of 500 recipients per hour" in verdict.text
    assert "capacity frees up at 22:25:20 UTC (in 12 minutes)" in verdict.text
    assert "suspended" not in verdict.text


def test_over_limit_reply_that_suspends_says_so() -> None:
    verdict = over_limit_verdict("acme", 5, NOW + 30, NOW, suspended_after=(3, 86400))
    assert "(in 30 seconds)" in verdict.text
    assert "reached 3 times within 24 hours, the account is now suspended" in verdict.text


def test_message_larger_than_the_limit_is_refused_for_good() -> None:
    verdict = too_many_recipients_verdict("acme", 500, 501)
    assert (verdict.action, verdict.code, verdict.enhanced) == (Action.REJECT, "550", "5.7.1")
    assert "at most 500 recipients per hour" in verdict.text and "has 501" in verdict.text


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (3600, "1 hour"),
        (86400, "24 hours"),
        (5400, "90 minutes"),
        (60, "1 minute"),
        (45, "45 seconds"),
    ],
)
def test_describe_period(seconds: int, words: str) -> None:
    assert describe_period(seconds) == words


def test_describe_moment_rounds_the_wait_up() -> None:
    assert describe_moment(NOW + 61, NOW) == "22:14:21 UTC (in 2 minutes)"
    assert describe_moment(NOW, NOW + 5) == "22:13:20 UTC (in 0 seconds)"


def test_suspension_reason() -> None:
    assert suspension_reason(500, 5, 86400) == (
        "its limit of 500 recipients per hour was reached 5 times within 24 hours"
    )


# -- config -------------------------------------------------------------------


def test_ratelimit_config_keys() -> None:
    settings = settings_from_mapping(
        {
            "policy": {"recipients_per_hour": 300},
            "ratelimit": {"suspend_after": 3, "suspend_period": "12h"},
            "accounts": [{"id": "acme", "recipients_per_hour": 1000}, {"id": "globex"}],
        }
    )
    assert settings.ratelimit.suspend_after == 3
    assert settings.ratelimit.suspend_period == 12 * 3600
    assert settings.recipients_per_hour(settings.account("acme")) == 1000
    assert settings.recipients_per_hour(settings.account("globex")) == 300
    defaults = settings_from_mapping({})
    assert (defaults.ratelimit.suspend_after, defaults.ratelimit.suspend_period) == (5, 86400)
    assert (
        settings_from_mapping({"ratelimit": {"suspend_period": 90}}).ratelimit.suspend_period == 90
    )


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"ratelimit": {"suspend_period": "soon"}}, "ratelimit.suspend_period"),
        ({"ratelimit": {"suspend_period": "0h"}}, "ratelimit.suspend_period"),
        ({"ratelimit": {"suspend_period": -5}}, "ratelimit.suspend_period"),
        ({"ratelimit": {"suspend_after": -1}}, "ratelimit.suspend_after"),
        ({"ratelimit": {"suspend_afterr": 1}}, "ratelimit.suspend_afterr"),
        ({"policy": {"recipients_per_hour": 0}}, "policy.recipients_per_hour"),
        (
            {"accounts": [{"id": "acme", "recipients_per_hour": 0}]},
            "accounts[acme].recipients_per_hour",
        ),
    ],
)
def test_bad_ratelimit_config_names_the_key(document: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(document)
    assert caught.value.key == key


# -- the check, through the pipeline, with an in-memory counter ----------------


class MemoryCounter:
    """The window model per account behind the check's Counter interface."""

    def __init__(self, suspend_after: int = 0) -> None:
        self.now_us = NOW * MICROSECONDS
        self.windows: dict[str, BucketWindow] = {}
        self.suspend_after = suspend_after
        self.strikes = 0
        self.down = False
        self.calls = 0
        self.reservations: dict[str, tuple[int, int]] = {}  # id -> (bucket, cost)

    def reserve(
        self,
        account_id: str,
        cost: int,
        limit: int,
        suspension_reason: str = "",
        reservation: str = "",
        watch_only: bool = False,
    ) -> Decision:
        self.calls += 1
        if self.down:
            raise StoreError("redis", "connection refused")
        window = self.windows.setdefault(account_id, BucketWindow(limit, lambda: self.now_us))
        admission = window.reserve(cost)
        suspended = False
        if not admission.admitted:
            if not watch_only:
                self.strikes += 1
                suspended = self.suspend_after > 0 and self.strikes >= self.suspend_after
        else:
            self.reservations[reservation] = (admission.bucket, cost)
        return Decision(
            admission.admitted,
            admission.used,
            limit,
            admission.bucket,
            admission.frees_at,
            self.now_us / MICROSECONDS,
            suspended,
            reservation,
        )

    def refund(self, account_id: str, reservations: Mapping[str, int]) -> int:
        if self.down:
            raise StoreError("redis", "connection refused")
        returned = 0
        for reservation in reservations:
            bucket, cost = self.reservations.pop(reservation, (0, 0))
            if cost:
                self.windows[account_id].refund(bucket, cost)
                returned += cost
        return returned

    def used(self, account_id: str) -> int:
        window = self.windows.get(account_id)
        return window.used() if window else 0


def build(
    limit: int = 3, suspend_after: int = 0, **policy: Any
) -> tuple[Pipeline, MemoryCounter, Settings]:
    settings = settings_from_mapping(
        {
            "policy": {
                "local_domains": ["hosting.example"],
                "trusted_networks": ["127.0.0.1/32"],
                "recipients_per_hour": limit,
                **policy,
            },
            "ratelimit": {"suspend_after": suspend_after},
            "accounts": [
                {"id": "acme", "logins": ["alice@acme.example"], "uids": [1001]},
                {"id": "globex", "logins": ["bob@globex.example"], "recipients_per_hour": 1},
            ],
        }
    )
    counter = MemoryCounter(suspend_after)
    checks = [
        SuspensionCheck(MemorySuspensions()),
        RelayCheck(settings.policy.local_domains),
        RecipientRateCheck(counter, settings),
    ]
    return Pipeline(settings, checks), counter, settings


def smtp_send(pipeline: Pipeline, login: str | None, recipients: list[str]) -> list[str]:
    """One SMTP transaction; the reply to each RCPT ('' = accepted), then EOM."""
    txn = pipeline.begin(REMOTE, login=login, mail_from="alice@acme.example")
    assert not pipeline.mail(txn).is_final
    replies = [pipeline.rcpt(txn, rcpt).reply() for rcpt in recipients]
    replies.append(pipeline.eom(txn).reply())
    return replies


def test_recipients_up_to_the_limit_pass_and_the_next_is_deferred() -> None:
    pipeline, counter, _ = build(limit=3)
    replies = smtp_send(pipeline, "alice@acme.example", [f"r{i}@example.net" for i in range(4)])
    assert replies[:3] == ["", "", ""]
    assert replies[3].startswith("451 4.7.1 Account acme has reached its limit of 3 recipients")
    assert replies[4] == ""  # the message goes to the three accepted recipients
    assert counter.used("acme") == 3
    # across messages too, and another account is not affected
    assert smtp_send(pipeline, "alice@acme.example", ["x@example.net"])[0].startswith("451 4.7.1")
    assert smtp_send(pipeline, "bob@globex.example", ["y@example.net"]) == ["", ""]


def test_aborted_or_refused_transactions_give_their_quota_back() -> None:
    pipeline, counter, _ = build(limit=3)
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "a@example.net")
    pipeline.rcpt(txn, "b@example.net")
    assert counter.used("acme") == 2
    pipeline.abort(txn)
    assert counter.used("acme") == 0
    assert smtp_send(pipeline, "alice@acme.example", ["a@x.net", "b@x.net", "c@x.net"]) == [""] * 4


def test_relay_refusals_consume_no_quota_and_unknown_senders_are_not_counted() -> None:
    pipeline, counter, _ = build(limit=3)
    replies = smtp_send(pipeline, None, ["a@example.net", "b@hosting.example"])
    assert replies[0].startswith("554 5.7.1") and replies[1] == ""
    assert counter.calls == 0  # no account: nothing counted


def test_sendmail_submission_is_counted_whole_in_one_reservation() -> None:
    pipeline, counter, _ = build(limit=3)

    def submit(recipients: list[str]) -> str:
        txn = pipeline.begin(LOCAL, login=None, mail_from="alice")
        pipeline.mail(txn)
        for rcpt in recipients:
            pipeline.rcpt(txn, rcpt)
        txn.uid = 1001  # what the adapter reads from the queue file
        return pipeline.eom(txn).reply()

    assert submit(["a@x.net", "b@x.net"]) == ""
    assert counter.calls == 1 and counter.used("acme") == 2
    reply = submit(["c@x.net", "d@x.net"])  # 2 + 2 > 3: the whole message waits
    assert reply.startswith("451 4.7.1 Account acme has reached its limit of 3 recipients")
    assert counter.used("acme") == 2
    assert submit(["e@x.net"]) == ""
    assert counter.used("acme") == 3
    too_big = submit([f"r{i}@x.net" for i in range(4)])
    assert too_big.startswith("550 5.7.1 Account acme may send to at most 3 recipients")


def test_the_refusal_that_suspends_also_refuses_the_message() -> None:
    pipeline, _, _ = build(limit=1, suspend_after=1)
    replies = smtp_send(pipeline, "alice@acme.example", ["a@x.net", "b@x.net"])
    assert replies[0] == ""
    assert replies[1].startswith("451 4.7.1") and "now suspended" in replies[1]
    assert replies[2].startswith("550 5.7.1 Account acme is suspended since 2023-11-14T22:13:20Z")


def test_store_down_tempfails_or_accepts_as_configured() -> None:
    pipeline, counter, _ = build(limit=3)
    counter.down = True
    replies = smtp_send(pipeline, "alice@acme.example", ["a@x.net"])
    assert replies[0].startswith("451 4.3.0")
    pipeline, counter, _ = build(limit=3, on_store_error="accept")
    counter.down = True
    assert smtp_send(pipeline, "alice@acme.example", ["a@x.net"]) == ["", ""]
