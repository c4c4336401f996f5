"""The rate-limit rule's texts, its config keys, and the check's reserve/refund
logic driven through the real Pipeline with an in-memory counter (no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.checks.ratelimit import RecipientRateCheck, Reservations
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import ConfigError, Settings, settings_from_mapping
from sendwarden.decisionlog import TRACE
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.ratelimit import (
    RULE,
    describe_moment,
    describe_period,
    over_limit_verdict,
    suspension_reason,
    too_many_recipients_verdict,
)
from sendwarden.policy.verdict import Action
from sendwarden.ratelimit.counter import Decision, RecentBatch, Settlement
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
        self.suspended: dict[str, bytes] = {}  # what the reservation script sees
        self.settles = 0

    def reserve(
        self,
        account_id: str,
        cost: int,
        limit: int,
        suspension_reason: str = "",
        reservation: str = "",
        want: int = 0,
        watch_only: bool = False,
    ) -> Decision:
        self.calls += 1
        if self.down:
            raise StoreError("redis", "connection refused")
        if account_id in self.suspended:
            return Decision(False, 0, limit, 0, None, self.now_us / MICROSECONDS,
                            suspension=self.suspended[account_id])  # fmt: skip
        window = self.windows.setdefault(account_id, BucketWindow(limit, lambda: self.now_us))
        admission = window.reserve(cost)
        suspended = False
        granted = 0
        if not admission.admitted:
            if not watch_only:
                self.strikes += 1
                suspended = self.suspend_after > 0 and self.strikes >= self.suspend_after
        else:
            extra = min(want - cost, limit - admission.used)
            if extra > 0:  # the batch: as many more as fit, in the same bucket
                assert window.reserve(extra).admitted
            granted = cost + max(extra, 0)
            self.reservations[reservation] = (admission.bucket, granted)
        return Decision(
            admission.admitted,
            admission.used + max(granted - cost, 0),  # as the script: the batch included
            limit,
            admission.bucket,
            admission.frees_at,
            self.now_us / MICROSECONDS,
            suspended,
            reservation,
            granted,
        )

    def settle(
        self,
        account_id: str,
        reservation: tuple[str, int, int] | None,
        recent: RecentBatch | None = None,
        extra: tuple[str, int, int] | None = None,
        fill: int = 0,
    ) -> Settlement:
        self.settles += 1
        if self.down:
            raise StoreError("redis", "connection refused")
        given = 0
        if reservation is not None:
            reservation_id, bucket, keep = reservation
            recorded_bucket, cost = self.reservations.get(reservation_id, (bucket, 0))
            if cost > keep:
                given = cost - keep
                self.windows[account_id].refund(recorded_bucket, given)
                self.reservations[reservation_id] = (recorded_bucket, keep)
        if extra is None:
            return Settlement(given, 0)
        extra_id, count, limit = extra
        if account_id in self.suspended:
            return Settlement(given, 0, False, suspension=self.suspended[account_id])
        window = self.windows.setdefault(account_id, BucketWindow(limit, lambda: self.now_us))
        admission = window.reserve(count)  # all or nothing, no strike
        if not admission.admitted:
            return Settlement(given, 0, False, used=window.used())
        self.reservations[extra_id] = (admission.bucket, count)
        return Settlement(given, 0, True, admission.bucket, admission.used)

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
    assert counter.used("acme") == 1  # MAIL's batch of one; b is reserved at the end
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
    assert replies[2].startswith(
        "550 5.7.1 Account acme is suspended because its limit of 1 recipients per hour"
    )
    assert "(since 2023-11-14T22:13:20Z)" in replies[2]


def test_store_down_tempfails_or_accepts_as_configured() -> None:
    pipeline, counter, _ = build(limit=3)
    counter.down = True
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    # MAIL's batch reservation (which reads the suspension too) is the first to fail
    assert pipeline.mail(txn).reply().startswith("451 4.3.0")
    assert counter.used("acme") == 0
    pipeline, counter, _ = build(limit=3, on_store_error="accept")
    counter.down = True
    assert smtp_send(pipeline, "alice@acme.example", ["a@x.net"]) == ["", ""]


# -- batches: fewer round trips, the same exact count ------------------------------


def test_a_batch_reserves_ahead_and_gives_back_what_it_did_not_use() -> None:
    pipeline, counter, _ = build(limit=1000)  # batches of 10 (2 % of 1000 is 20)
    assert smtp_send(pipeline, "alice@acme.example", [f"r{i}@x.net" for i in range(3)]) == [""] * 4
    assert (counter.calls, counter.settles) == (1, 1)  # one reservation, one settlement
    assert counter.used("acme") == 3
    counter.calls = 0
    replies = smtp_send(pipeline, "alice@acme.example", [f"s{i}@x.net" for i in range(11)])
    assert replies == [""] * 12
    assert (counter.calls, counter.settles) == (1, 2)  # the 11th reserved at the end
    assert counter.used("acme") == 14


@pytest.mark.parametrize("count", [11, 35, 100, 600])
def test_any_number_of_recipients_within_the_room_costs_two_round_trips(count: int) -> None:
    pipeline, counter, _ = build(limit=1000)
    assert smtp_send(pipeline, "alice@acme.example", ["first@x.net"]) == ["", ""]
    counter.calls = counter.settles = 0
    replies = smtp_send(pipeline, "alice@acme.example", [f"r{i}@x.net" for i in range(count)])
    assert replies == [""] * (count + 1)
    assert (counter.calls, counter.settles) == (1, 1)
    assert counter.used("acme") == 1 + count


def test_provisional_recipients_that_no_longer_fit_defer_the_message_and_cost_nothing() -> None:
    """Another transaction of the account took the room meanwhile: the end of message
    cannot count them, so the message is deferred (the client sends it again) and
    everything it reserved goes back; the other transaction's count stays."""
    pipeline, counter, _ = build(limit=30)
    first = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert not pipeline.mail(first).is_final
    for n in range(20):
        assert not pipeline.rcpt(first, f"a{n}@x.net").is_final
    assert (
        smtp_send(pipeline, "alice@acme.example", [f"b{n}@x.net" for n in range(15)]) == [""] * 16
    )
    verdict = pipeline.eom(first)
    assert verdict.reply().startswith("451 4.7.1 Account acme has reached its limit of 30")
    assert counter.used("acme") == 15
    assert counter.strikes == 0  # inside its limit when its recipients were accepted


def test_a_small_limit_is_never_held_ahead() -> None:
    pipeline, counter, _ = build(limit=40)  # 2 % of 40 rounds to 1: one at a time
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    pipeline.mail(txn)
    for n in range(3):
        pipeline.rcpt(txn, f"r{n}@x.net")
        assert counter.used("acme") == 1  # one at MAIL; the rest counted at the end
        assert _unused(txn) == 0  # nothing held that could defer another transaction
    pipeline.abort(txn)
    assert counter.used("acme") == 0


def test_the_mail_reservation_refuses_a_suspended_account() -> None:
    """The suspension check's own store says nothing here: the counter's answer is
    enough, at MAIL, in the round trip that reserves the first batch."""
    pipeline, counter, _ = build(limit=1000)
    counter.suspended["acme"] = b'{"reason": "abuse report", "since": "2026-01-01T00:00:00Z"}'
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    verdict = pipeline.mail(txn)
    assert verdict.reply().startswith("550 5.7.1 Account acme is suspended by the provider")
    assert "(since 2026-01-01T00:00:00Z)" in verdict.text
    assert "abuse report" not in verdict.text  # staff's reason: in the decision's notes
    assert any("abuse report" in note for note in txn.scratch[TRACE].notes)
    assert counter.used("acme") == 0


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]]]:
    """A limit and steps over up to 4 concurrent transactions of one account:
    ("rcpt", k), ("eom", k), ("abort", k). Small limits too, so that the window
    fills within the steps: that is where deferrals (and their causes) happen."""
    limit = draw(st.one_of(st.integers(min_value=2, max_value=40), st.integers(50, 400)))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(["rcpt", "rcpt", "rcpt", "eom", "abort"]),
                      st.integers(0, 3)),
            min_size=30,
            max_size=160,
        )
    )  # fmt: skip
    return limit, steps


@settings(max_examples=150, deadline=None)
@given(interleavings())
def test_batches_never_count_more_than_the_limit_nor_defer_without_cause(
    case: tuple[int, list[tuple[str, int]]],
) -> None:
    """Concurrent transactions of one account reserving in batches and accepting
    recipients provisionally within the room last seen: the window never holds more
    than the limit; a recipient is deferred only when the accepted recipients plus
    what *other* transactions hold unused fill the limit, and a message at its end
    only when they exceed it; and once every transaction ended, the window holds
    exactly the accepted messages' recipients."""
    limit, steps = case
    pipeline, counter, _ = build(limit=limit)
    run_interleaving(pipeline, lambda: counter.used("acme"), limit, steps)


def run_interleaving(
    pipeline: Pipeline, used: Callable[[], int], limit: int, steps: list[tuple[str, int]]
) -> None:
    """Drive up to 4 transactions of account acme through ``steps`` and check, after
    every step, that the window (``used``) never holds more than ``limit`` and that
    nothing is deferred without cause; at the end, that it holds exactly the accepted
    messages' recipients. Shared with the same property on a real Redis (the Lua
    scripts): tests/integration/test_ratelimit_interleavings.py."""
    open_txns: dict[int, Transaction] = {}
    delivered = 0  # recipients of accepted messages
    for action, k in [*steps, *(("eom", k) for k in range(4))]:
        txn = open_txns.get(k)
        if txn is None:
            if action != "rcpt":
                continue
            txn = open_txns[k] = pipeline.begin(
                REMOTE, login="alice@acme.example", mail_from="alice@acme.example"
            )
            assert not pipeline.mail(txn).is_final
        if action == "rcpt":
            held_by_others = sum(_unused(other) for j, other in open_txns.items() if j != k)
            in_flight = sum(len(other.recipients) for other in open_txns.values())
            verdict = pipeline.rcpt(txn, f"r{len(txn.recipients)}@x.net")
            if verdict.is_final:
                assert delivered + in_flight + held_by_others >= limit
        elif action == "eom":
            held = sum(_unused(other) for j, other in open_txns.items() if j != k)
            in_flight = sum(len(other.recipients) for other in open_txns.values())
            del open_txns[k]
            if txn.recipients:
                if pipeline.eom(txn).is_final:
                    # its provisional recipients no longer fit: the window is full
                    assert delivered + in_flight + held > limit
                else:
                    delivered += len(txn.recipients)
            else:
                pipeline.abort(txn)
        else:
            del open_txns[k]
            pipeline.abort(txn)
        assert used() <= limit
    assert used() == delivered


def _unused(txn: Transaction) -> int:
    reservations = txn.scratch.get(RULE)
    return reservations.unused if isinstance(reservations, Reservations) else 0
