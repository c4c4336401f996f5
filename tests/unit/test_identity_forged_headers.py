"""Provider headers supplied by a client: the pure detection, and the check that
refuses or strips them (policy.forged_header_action)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from sendwarden.checks.identity import IdentityCheck
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.decisionlog import RuleTrace
from sendwarden.pipeline import TRACE
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.forged_headers import (
    RULE,
    ForgedKind,
    authserv_ids,
    find_forged_headers,
    forged_header_verdict,
    headers_after_removal,
)
from sendwarden.policy.verdict import Action

HOSTS = ("mta.provider.example", "mx1.provider.example")
IDS = authserv_ids("auth.provider.example", HOSTS)
OWN_RECEIVED = "from client (client [203.0.113.5]) by mta.provider.example (Postfix) id 4AbC1"


def forged(headers: list[tuple[str, str]], queue_id: str = "4AbC1") -> list[tuple[str, int, str]]:
    found = find_forged_headers(
        headers, provider_hostnames=HOSTS, authserv_ids=IDS, queue_id=queue_id
    )
    return [(header.name, header.index, header.kind.value) for header in found]


R, AR = "Received", "Authentication-Results"
DETECTION = [
    # (case, header name, value, forged?)
    ("Received by a provider MTA", R, "from x by mta.provider.example with ESMTP id 1", True),
    ("Received from a provider MTA", R, "from mx1.provider.example ([192.0.2.1]) by x", True),
    ("provider name as reverse DNS", R, "from x (MTA.Provider.Example [192.0.2.1]) by y", True),
    ("provider name, trailing dot", R, "from x by mta.provider.example. id 2", True),
    ("the MTA's own, by queue id", R, OWN_RECEIVED, False),
    ("another server's Received", R, "from a by mail.customer.example id 4AbC1", False),
    ("a provider subdomain is not a provider host", R, "by x.mta.provider.example", False),
    ("A-R for the authserv-id", AR, "auth.provider.example; spf=pass", True),
    ("A-R for a host name, with version", AR, "mx1.provider.example 1; dkim=pass", True),
    ("A-R with a leading comment", AR, "(c) AUTH.provider.example; none", True),
    ("A-R of another server", AR, "mx.google.example; spf=pass", False),
    ("A-R naming the id later only", AR, "other.example; x=auth.provider.example", False),
    ("sendwarden's own header", "X-Sendwarden-Checked", "yes", True),
    ("sendwarden's own header, any case", "x-sendwarden", "yes", True),
    ("an unrelated X- header", "X-Mailer", "mta.provider.example", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "name", "value", "is_forged"), DETECTION, ids=[c[0] for c in DETECTION]
)
def test_detection(case: str, name: str, value: str, is_forged: bool) -> None:
    assert bool(forged([("From", "a@acme.example"), (name, value)])) is is_forged


def test_indexes_count_headers_of_the_same_name() -> None:
    headers = [
        ("Received", OWN_RECEIVED),
        ("received", "from x by mx1.provider.example id Z"),
        ("From", "a@acme.example"),
        ("Received", "from y by elsewhere.example"),
        ("Received", "by mta.provider.example id Y"),
        ("Authentication-Results", "mx.other.example; none"),
        ("Authentication-Results", "auth.provider.example; spf=pass"),
    ]
    assert forged(headers) == [
        ("received", 2, "received"),
        ("Received", 4, "received"),
        ("Authentication-Results", 2, "authentication-results"),
    ]


def test_without_a_queue_id_nothing_is_the_mtas_own() -> None:
    assert forged([("Received", OWN_RECEIVED)], queue_id="") == [("Received", 1, "received")]


def test_no_provider_names_configured_checks_only_own_headers() -> None:
    headers = [("Received", "by mta.provider.example"), ("X-Sendwarden-Test", "1")]
    found = find_forged_headers(headers, provider_hostnames=(), authserv_ids=())
    assert [header.kind for header in found] == [ForgedKind.OWN]


def test_authserv_ids_default_to_the_host_names() -> None:
    assert authserv_ids("", HOSTS) == HOSTS
    assert authserv_ids("auth.example", ()) == ("auth.example",)


def test_headers_after_removal() -> None:
    headers = [("Received", "1"), ("From", "f"), ("received", "2"), ("Received", "3")]
    assert headers_after_removal(headers, [("RECEIVED", 2), ("From", 1)]) == [
        ("Received", "1"),
        ("Received", "3"),
    ]


# -- the check -----------------------------------------------------------------------


def settings_with(**policy: Any) -> Settings:
    return settings_from_mapping(
        {
            "policy": {"provider_hostnames": list(HOSTS), **policy},
            "accounts": [
                {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]}
            ],
        }
    )


def transaction(
    settings: Settings, headers: list[tuple[str, str]], *, outbound: bool = True
) -> Transaction:
    txn = Transaction(
        client=Client(ipaddress.ip_address("203.0.113.5"), "client.example"),
        login="alice@acme.example" if outbound else None,
        mail_from="alice@acme.example",
        queue_id="4AbC1",
    )
    txn.account = settings.account("acme") if outbound else None
    txn.account_source = "login" if outbound else ""
    txn.headers = [("From", "Alice <alice@acme.example>"), *headers]
    txn.scratch[TRACE] = RuleTrace()
    return txn


FORGED_SET = [
    ("Received", "from evil by mta.provider.example with ESMTP id FORGED"),
    ("Received", OWN_RECEIVED),
    ("Received", "from evil2 by mx1.provider.example id FORGED2"),
    ("Authentication-Results", "mta.provider.example; dkim=pass"),
    ("X-Sendwarden-Verdict", "accept"),
]


def test_refuse_is_the_default() -> None:
    settings = settings_with()
    assert settings.policy.forged_header_action == "refuse"
    txn = transaction(settings, FORGED_SET)
    verdict = IdentityCheck(settings).at_eom(txn)
    assert verdict is not None
    assert (verdict.action, verdict.rule, verdict.code, verdict.enhanced) == (
        Action.REJECT,
        RULE,
        "550",
        "5.7.1",
    )
    assert verdict.text.startswith("Forged header refused for account acme:")
    assert "Received header claiming" in verdict.text
    assert "mta.provider.example" in verdict.text
    assert txn.changes.remove_headers == []


def test_strip_removes_every_forged_header_highest_index_first() -> None:
    settings = settings_with(forged_header_action="strip")
    txn = transaction(settings, FORGED_SET)
    assert IdentityCheck(settings).at_eom(txn) is None
    assert txn.changes.remove_headers == [
        ("Received", 3),
        ("Received", 1),
        ("Authentication-Results", 1),
        ("X-Sendwarden-Verdict", 1),
    ]
    trace = txn.scratch[TRACE]
    assert any("stripped forged Received #3 (mx1.provider.example)" in note for note in trace.notes)


def test_inbound_mail_keeps_its_received_lines_but_loses_our_results() -> None:
    """Mail from the internet is never refused for them: a message that left through
    this provider and came back via a list carries our Received line honestly."""
    settings = settings_with()  # refuse, but not for inbound mail
    txn = transaction(settings, FORGED_SET, outbound=False)
    assert IdentityCheck(settings).at_eom(txn) is None
    assert txn.changes.remove_headers == [
        ("Authentication-Results", 1),
        ("X-Sendwarden-Verdict", 1),
    ]


def test_identity_is_judged_before_forged_headers() -> None:
    settings = settings_with()
    txn = transaction(settings, FORGED_SET)
    txn.headers[0] = ("From", "ceo@globex.example")
    verdict = IdentityCheck(settings).at_eom(txn)
    assert verdict is not None and verdict.rule == "forged-sender"


def test_unlisted_trusted_sender_is_accepted_and_noted() -> None:
    settings = settings_with()
    txn = transaction(settings, [], outbound=False)
    txn.trusted = True
    txn.account = AccountDirectory(()).get("host:192.0.2.7")
    txn.account_source = "trusted-network"
    txn.mail_from = "bounces@shop.example"
    txn.headers = [("From", "News <news@shop.example>")]
    assert IdentityCheck(settings).at_eom(txn) is None
    notes = txn.scratch[TRACE].notes
    assert "identity: unlisted sender host:192.0.2.7; From news@shop.example" in notes


def test_forged_header_reply_names_the_header_kind() -> None:
    settings = settings_with()
    txn = transaction(settings, [])
    found = find_forged_headers(
        [("Authentication-Results", "mta.provider.example; spf=pass"), ("X-Sendwarden", "1")],
        provider_hostnames=HOSTS,
        authserv_ids=IDS,
    )
    texts = [forged_header_verdict(txn, header).text for header in found]
    assert "authserv-id mta.provider.example" in texts[0]
    assert "only this provider's filter may add" in texts[1]
