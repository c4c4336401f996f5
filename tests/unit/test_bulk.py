"""Bulk detection and the consent rule: pure tables, no I/O."""

from __future__ import annotations

import ipaddress

import pytest

from sendwarden.config import settings_from_mapping
from sendwarden.policy.consent import (
    REMOVED_HEADER,
    ConsentOutcome,
    campaign_reason,
    consent_outcome,
    distinct_recipients,
    has_list_unsubscribe,
    is_outbound,
    list_id_of,
    message_bulk_reasons,
    missing_unsubscribe_verdict,
    normalise_list_id,
    offered_unsubscribe_uris,
    one_click_uri,
    unsubscribe_uris,
)
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import Action

SETTINGS = settings_from_mapping({"accounts": [{"id": "acme", "logins": ["alice@acme.example"]}]})
REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example")


def message(
    recipients: int = 1, headers: list[tuple[str, str]] | None = None, login: str | None = "alice"
) -> Transaction:
    return Transaction(
        client=REMOTE,
        login=login,
        account=SETTINGS.accounts[0] if login else None,
        account_source="login" if login else "",
        recipients=[f"r{index}@example.org" for index in range(recipients)],
        headers=headers or [],
    )


@pytest.mark.parametrize(
    ("recipients", "headers", "bulk"),
    [
        (1, [], False),
        (49, [("Subject", "hi")], False),
        (50, [], True),
        (1, [("List-Id", "News <news.acme.example>")], True),
        (1, [("list-unsubscribe", "<mailto:u@acme.example>")], True),
        (1, [("Precedence", "bulk")], True),
        (1, [("Precedence", " List ")], True),
        (1, [("Precedence", "junk")], True),
        (1, [("Precedence", " JUNK ")], True),
        (1, [("Precedence", "first-class")], False),
        # Feedback-ID is the sender's own label, not a bulk signal (docs/content-rules.md).
        (1, [("Feedback-ID", "campaign:acme:esp")], False),
        # A vacation notice says Precedence: bulk to silence other robots; not a mailing.
        (1, [("Precedence", "bulk"), ("Auto-Submitted", "auto-replied (vacation)")], False),
    ],
)
def test_message_bulk_signals(recipients: int, headers: list[tuple[str, str]], bulk: bool) -> None:
    assert bool(message_bulk_reasons(message(recipients, headers), 50)) is bulk


def test_duplicate_recipients_count_once() -> None:
    txn = message(0)
    txn.recipients = ["bob@Example.ORG", "bob@example.org", "<bob@EXAMPLE.org>", "Bob@example.org"]
    assert message_bulk_reasons(txn, 3) == []  # local parts may be case-sensitive
    assert message_bulk_reasons(txn, 2) == ["2 recipients (bulk from 2)"]


def test_campaign_reason_from_the_hourly_count() -> None:
    assert campaign_reason(199, 200) is None
    reason = campaign_reason(200, 200)
    assert reason is not None and "200 different recipients" in reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Acme News <News.Acme.Example>", "news.acme.example"),
        ("news.acme.example", "news.acme.example"),
        ('"<odd>" <real.acme.example>', "real.acme.example"),
        ("  ", ""),
    ],
)
def test_list_id_normalised(value: str, expected: str) -> None:
    assert normalise_list_id(value) == expected


def test_list_id_of_message() -> None:
    assert list_id_of(message(1, [("List-ID", "<a.b.example>")])) == "a.b.example"
    assert list_id_of(message(1)) == ""


@pytest.mark.parametrize(
    ("value", "usable"),
    [
        ("<mailto:leave@acme.example?subject=unsubscribe>", True),
        ("<https://acme.example/u/123>, <mailto:leave@acme.example>", True),
        ("  <HTTPS://acme.example/u/1>", True),
        ("https://acme.example/u/1", False),  # RFC 2369 wants angle brackets
        ("<ftp://acme.example/x>", False),
        ("", False),
        # Schemes with nothing behind them: no client can unsubscribe with these.
        ("<https:>, <mailto:>", False),
        ("<http:>", False),
        ("<https://>", False),
        ("<https:///unsubscribe>", False),
        ("<https://user@/x>", False),
        ("<https://[::1/x>", False),  # unparsable host
        ("<https://acme.example:99999/u>", True),  # a host is there; the port is the site's
        ("<mailto:?subject=unsubscribe>", False),
        ("<mailto:leave>", False),
        ("<mailto:@acme.example>", False),
        ("<mailto:leave@>", False),
        ("<mailto:%20@acme.example>", False),
        ("<mailto:leave%40acme.example>", True),  # percent-encoded "@" is still an address
        ("<mailto:,leave@acme.example>", True),
        ("<MAILTO:Leave@Acme.Example>", True),
        ("<http://acme.example>", True),
        ("<https:>, <mailto:>, <https://acme.example/u>", True),
    ],
)
def test_list_unsubscribe_needs_a_usable_uri(value: str, usable: bool) -> None:
    assert bool(unsubscribe_uris(value)) is usable
    assert has_list_unsubscribe(message(1, [("List-Unsubscribe", value)])) is usable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [
                ("List-Unsubscribe", "<mailto:u@acme.example>, <https://acme.example/u/1>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
            "https://acme.example/u/1",
        ),
        (
            [
                ("List-Unsubscribe", "<https://acme.example/u/1>"),
                ("list-unsubscribe-post", " list-unsubscribe = one-click "),
            ],
            "https://acme.example/u/1",
        ),
        # RFC 8058 needs an https URI: http, or https without a host, is no one-click.
        (
            [
                ("List-Unsubscribe", "<http://acme.example/u/1>, <https:>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
            None,
        ),
        ([("List-Unsubscribe", "<https://acme.example/u/1>")], None),
        (
            [
                ("List-Unsubscribe", "<https://acme.example/u/1>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=Yes"),
            ],
            None,
        ),
    ],
)
def test_rfc_8058_one_click_is_recognised(
    headers: list[tuple[str, str]], expected: str | None
) -> None:
    assert one_click_uri(message(1, headers)) == expected


def test_unusable_list_unsubscribe_reply_says_what_is_wrong() -> None:
    txn = message(1, [("List-Unsubscribe", "<https:>, <mailto:>")])
    assert not has_list_unsubscribe(txn)
    offered = offered_unsubscribe_uris(txn)
    assert offered == ["https:", "mailto:"]
    reply = missing_unsubscribe_verdict("acme", ["a List-Unsubscribe header"], offered).reply()
    assert "its List-Unsubscribe names no usable one: <https:>, <mailto:>" in reply
    assert "a mailto: needs an address, an http(s) URL a host" in reply


def test_inbound_mail_is_not_judged() -> None:
    inbound = message(60, login=None)
    assert not is_outbound(inbound)
    inbound.trusted = True
    assert is_outbound(inbound)
    assert is_outbound(message(60))


RECIPIENTS = [
    "carol@x.example",
    "dave@x.example",
    "Erin@X.Example",
    "fred@x.example",
    "gina@x.example",
]
DISTINCT = distinct_recipients(RECIPIENTS)


def test_distinct_recipients_keep_the_first_spelling() -> None:
    assert distinct_recipients(["a@X.example", "<a@x.EXAMPLE>", "b@x.example"]) == {
        "a@x.example": "a@X.example",
        "b@x.example": "b@x.example",
    }


def test_all_consenting_passes() -> None:
    consenting = set(DISTINCT)
    assert consent_outcome("acme", DISTINCT, consenting, ["60 recipients"]) == ConsentOutcome()
    assert consent_outcome("acme", {}, set(), []) == ConsentOutcome()


def test_missing_consent_refused_naming_the_first_few() -> None:
    outcome = consent_outcome("acme", DISTINCT, {"carol@x.example"}, ["5 recipients"])
    verdict = outcome.verdict
    assert verdict is not None and verdict.action is Action.REJECT
    reply = verdict.reply()
    assert reply.startswith("550 5.7.1 Bulk mail from account acme refused: 4 of 5 recipients")
    assert "dave@x.example, Erin@X.Example, fred@x.example and 1 more" in reply
    assert "because of 5 recipients" in reply
    assert "gina" not in reply
    assert outcome.remove == ()


def test_remove_mode_drops_recipients_without_consent_and_says_so() -> None:
    envelope = [*RECIPIENTS, "dave@X.EXAMPLE"]  # the same mailbox twice goes twice
    outcome = consent_outcome(
        "acme",
        distinct_recipients(envelope),
        {"carol@x.example", "Erin@x.example"},
        ["r"],
        "remove",
        envelope,
    )
    assert outcome.verdict is None
    assert outcome.remove == (
        "dave@x.example",
        "fred@x.example",
        "gina@x.example",
        "dave@X.EXAMPLE",
    )
    assert outcome.header == (REMOVED_HEADER, "3 recipients without consent")
    two = RECIPIENTS[:2]
    single = consent_outcome(
        "acme", distinct_recipients(two), {"carol@x.example"}, ["r"], "remove", two
    )
    assert single.remove == ("dave@x.example",)
    assert single.header == (REMOVED_HEADER, "1 recipient without consent")


def test_remove_mode_refuses_when_nobody_would_be_left() -> None:
    outcome = consent_outcome("acme", DISTINCT, set(), ["r"], "remove", RECIPIENTS)
    assert outcome.remove == ()
    assert outcome.verdict is not None and outcome.verdict.code == "550"


def test_missing_unsubscribe_reply() -> None:
    reply = missing_unsubscribe_verdict("acme", ["a List-Id header"]).reply()
    assert reply.startswith(
        "550 5.7.1 Bulk mail from account acme must carry a List-Unsubscribe header (RFC 8058"
    )
