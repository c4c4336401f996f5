"""A proven identity authorises, a claim only labels: attribution through the real
Pipeline with the rate limit, suspension and unknown-sender checks (in-memory store)."""

from __future__ import annotations

import ipaddress

import pytest

from sendwarden.checks.unknown import unknown_sender_checks
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.unknown import RULE, unknown_sender_verdict
from sendwarden.policy.verdict import Action
from tests.unit.test_ratelimit_check import LOCAL, REMOTE, build

TRUSTED_HOST = Client(address=ipaddress.ip_address("127.0.0.1"), hostname="web1", port=4000)


def send(
    pipeline: Pipeline,
    client: Client,
    login: str | None,
    mail_from: str,
    recipients: list[str],
    uid: int | None = None,
) -> tuple[Transaction, list[str]]:
    """One transaction; the replies at MAIL, each RCPT and end of message ('' = no objection)."""
    txn = pipeline.begin(client, login=login, mail_from=mail_from)
    replies = [pipeline.mail(txn).reply()]
    if replies[0]:
        return txn, replies
    replies += [pipeline.rcpt(txn, rcpt).reply() for rcpt in recipients]
    txn.uid = uid
    replies.append(pipeline.eom(txn).reply())
    return txn, replies


def test_a_strangers_mail_claiming_a_customer_spends_and_strikes_nothing() -> None:
    pipeline, counter, _ = build(limit=2, suspend_after=1)
    for _ in range(5):  # inbound mail to a local domain, MAIL FROM a customer's address
        txn, replies = send(
            pipeline, REMOTE, None, "alice@acme.example", ["a@hosting.example", "b@hosting.example"]
        )
        assert txn.account is None and replies == ["", "", "", ""]
    assert counter.calls == 0 and counter.strikes == 0
    # The customer's own quota is whole: its logged-in mail goes through.
    _, replies = send(pipeline, REMOTE, "alice@acme.example", "alice@acme.example", ["x@r.example"])
    assert replies == ["", "", ""] and counter.used("acme") == 1


@pytest.mark.parametrize(
    ("client", "login", "uid", "account_id"),
    [
        (REMOTE, "mallory@freemail.example", None, "login:mallory@freemail.example"),
        (LOCAL, None, 4242, "uid:4242"),
        (LOCAL, None, None, "local:unknown"),  # the uid could not be read: still counted
        (TRUSTED_HOST, None, None, "host:127.0.0.1"),
    ],
)
def test_unlisted_proven_senders_are_limited_at_the_default_and_suspended(
    client: Client, login: str | None, uid: int | None, account_id: str
) -> None:
    pipeline, counter, _ = build(limit=2, suspend_after=2)
    mail_from = login or "web@shop.example"
    txn, replies = send(pipeline, client, login, mail_from, ["a@r.example", "b@r.example"], uid)
    assert txn.account_id == account_id and replies[-1] == ""
    assert counter.used(account_id) == 2  # the default limit of 2 is used up
    _, replies = send(pipeline, client, login, mail_from, ["c@r.example"], uid)
    assert any(reply.startswith(f"451 4.7.1 Account {account_id} has reached") for reply in replies)
    _, replies = send(pipeline, client, login, mail_from, ["d@r.example"], uid)
    assert any("now suspended" in reply for reply in replies)  # two strikes: suspended


def test_unknown_senders_refuse_mode() -> None:
    pipeline, counter, settings = build(unknown_senders="refuse")
    assert settings.policy.unknown_senders == "refuse"
    pipeline = Pipeline(settings, [*unknown_sender_checks("refuse"), *pipeline.checks])
    _, replies = send(pipeline, REMOTE, "mallory@freemail.example", "m@freemail.example", ["a@r"])
    assert replies == [replies[0]] and replies[0].startswith("550 5.7.1 Sender refused: the login")
    _, replies = send(pipeline, LOCAL, None, "www-data", ["a@r.example"], uid=4242)
    assert replies[-1].startswith("550 5.7.1 Sender refused: the local user with uid 4242")
    _, replies = send(pipeline, LOCAL, None, "www-data", ["a@r.example"], uid=None)
    assert "a local user whose uid could not be read" in replies[-1]
    _, replies = send(pipeline, TRUSTED_HOST, None, "x@shop.example", ["a@r.example"])
    assert replies[0].startswith("550 5.7.1 Sender refused: the host 127.0.0.1")
    # Listed accounts and strangers writing to local domains are not its business.
    assert send(pipeline, REMOTE, "alice@acme.example", "a@acme.example", ["b@r.example"])[1] == [
        "", "", ""
    ]  # fmt: skip
    assert send(pipeline, REMOTE, None, "x@else.example", ["b@hosting.example"])[1] == ["", "", ""]
    assert counter.calls == 1


def test_unknown_sender_rule_is_silent_in_limit_mode() -> None:
    pipeline, _, _ = build()
    txn = pipeline.begin(REMOTE, login="m@freemail.example", mail_from="m@freemail.example")
    assert unknown_sender_verdict(txn, "limit") is None
    verdict = unknown_sender_verdict(txn, "refuse")
    assert verdict is not None and (verdict.action, verdict.rule) == (Action.REJECT, RULE)
    assert unknown_sender_checks("limit") == []
