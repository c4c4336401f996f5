"""Table tests of the pure identity rules: forged senders, impersonation, malformed
From/Sender headers, encoded words and internationalised domains."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import pytest

from sendwarden.config import Settings, settings_from_mapping
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.identity import (
    RULE_FORGED_SENDER,
    RULE_IMPERSONATION,
    RULE_MALFORMED,
    MalformedHeader,
    identity_verdict,
    parse_mailboxes,
    read_identity,
    shown_addresses,
    transaction_identity,
)
from sendwarden.policy.rendering import rendered
from sendwarden.policy.verdict import Action

PROVIDER = frozenset({"mta.provider.example"})


@pytest.fixture(scope="module")
def settings() -> Settings:
    return settings_from_mapping(
        {
            "accounts": [
                {
                    "id": "acme",
                    "logins": ["alice@acme.example"],
                    "domains": ["acme.example", "Bücher.example"],
                },
                {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
                {
                    "id": "initech",
                    "logins": ["peter@initech.example"],
                    "domains": ["initech.example"],
                    "allow_subdomains": True,
                },
            ]
        }
    )


def txn_for(
    settings: Settings,
    headers: list[tuple[str, str]],
    *,
    account: str | None = "acme",
    login: str | None = "alice@acme.example",
    mail_from: str = "alice@acme.example",
    trusted: bool = False,
    local: bool = False,
) -> Transaction:
    client = Client(ipaddress.ip_address("203.0.113.5"), "client.example", local_submission=local)
    txn = Transaction(client=client, trusted=trusted, login=login, mail_from=mail_from)
    txn.headers = headers
    if account is not None:
        txn.account = settings.account(account)
        txn.account_source = "login" if login else ("uid" if local else "network")
    else:  # attributed by proof, as the pipeline does (an unlisted sender, or nobody)
        attribution = AccountDirectory(settings.accounts).resolve(
            login=login, uid=None, client_address=client.address, local_submission=local,
            trusted=trusted,
        )  # fmt: skip
        txn.account, txn.account_source = attribution.account, attribution.source
    return txn


def judge(settings: Settings, headers: list[tuple[str, str]], **kwargs: Any) -> Any:
    txn = txn_for(settings, headers, **kwargs)
    return identity_verdict(txn, AccountDirectory(settings.accounts), provider_hostnames=PROVIDER)


def frm(value: str) -> list[tuple[str, str]]:
    return [("From", value), ("To", "bob@example.net"), ("Subject", "hi")]


# -- a known account: everything must be in its own domains -------------------------

ACCEPTED_FOR_ACME = [
    ("plain own address", frm("alice@acme.example")),
    ("name and own address", frm("Alice Example <alice@acme.example>")),
    ("upper-case domain", frm("ALICE@ACME.EXAMPLE")),
    ("display name shows the same own address", frm('"alice@acme.example" <alice@acme.example>')),
    ("display name shows another own address", frm('"billing@acme.example" <x@acme.example>')),
    ("an @ that is not an address", frm('"Team @ Acme" <team@acme.example>')),
    ("an address-like word without a dot", frm('"alice@home" <alice@acme.example>')),
    ("encoded-word name", frm("=?utf-8?q?J=C3=B6rg?= <joerg@acme.example>")),
    ("IDN domain, U-label", frm("Jörg <jörg@bücher.example>")),
    ("IDN domain, mixed case U-label", frm("jörg@BÜCHER.example")),
    ("IDN domain, A-label", frm("joerg@xn--bcher-kva.example")),
    ("two own From addresses", frm("a@acme.example, b@bücher.example")),
    ("own Sender", [*frm("a@acme.example"), ("Sender", "secretary@acme.example")]),
    ("folded From", frm("Alice Example\n <alice@acme.example>")),
]


@pytest.mark.parametrize(
    ("case", "headers"), ACCEPTED_FOR_ACME, ids=[c[0] for c in ACCEPTED_FOR_ACME]
)
def test_own_identity_is_accepted(settings: Settings, case: str, headers: Any) -> None:
    assert judge(settings, headers) is None


REFUSED_FOR_ACME = [
    # (case, headers, mail_from, rule, words the reply must contain)
    ("From in another customer's domain", frm("ceo@globex.example"), "alice@acme.example",
     RULE_FORGED_SENDER, ["From header address ceo@globex.example", "account acme"]),
    ("From in a stranger's domain", frm("Bank <billing@bank.example>"), "alice@acme.example",
     RULE_FORGED_SENDER, ["From header address billing@bank.example", "account acme"]),
    ("one of two From addresses foreign", frm("a@acme.example, b@globex.example"),
     "alice@acme.example", RULE_FORGED_SENDER, ["b@globex.example"]),
    ("envelope sender not owned", frm("alice@acme.example"), "alice@globex.example",
     RULE_FORGED_SENDER, ["envelope sender (MAIL FROM) alice@globex.example", "account acme"]),
    ("envelope sender without a domain", frm("alice@acme.example"), "alice",
     RULE_FORGED_SENDER, ["envelope sender"]),
    ("Sender not owned", [*frm("a@acme.example"), ("Sender", "x@globex.example")],
     "alice@acme.example", RULE_FORGED_SENDER, ["Sender header address x@globex.example"]),
    ("subdomain without allow_subdomains", frm("a@mail.acme.example"), "alice@acme.example",
     RULE_FORGED_SENDER, ["a@mail.acme.example"]),
    ("look-alike IDN domain", frm("a@\u0430cme.example"), "alice@acme.example",  # Cyrillic a
     RULE_FORGED_SENDER, ["From header address"]),
    ("display name shows a foreign address", frm('"billing@bank.example" <x@acme.example>'),
     "alice@acme.example", RULE_IMPERSONATION, ["display name", "billing@bank.example",
                                                "account acme"]),
    ("encoded word (Q) in the display name",
     frm("=?utf-8?q?billing=40bank=2Eexample?= <x@acme.example>"), "alice@acme.example",
     RULE_IMPERSONATION, ["billing@bank.example"]),
    ("encoded word (B) in the display name",
     frm("=?utf-8?b?YmlsbGluZ0BiYW5rLmV4YW1wbGU=?= <x@acme.example>"), "alice@acme.example",
     RULE_IMPERSONATION, ["billing@bank.example"]),
    ("encoded word inside quotes", frm('"=?utf-8?q?support=40globex.example?=" <x@acme.example>'),
     "alice@acme.example", RULE_IMPERSONATION, ["support@globex.example"]),
    ("encoded word split in two",
     frm("=?utf-8?q?billing=40?= =?utf-8?q?bank.example?= <x@acme.example>"),
     "alice@acme.example", RULE_IMPERSONATION, ["billing@bank.example"]),
    ("full-width at sign and dot", frm('"billing\uff20bank\uff0eexample" <x@acme.example>'),
     "alice@acme.example", RULE_IMPERSONATION, ["billing@bank.example"]),
    ("address in a comment", frm("x@acme.example (billing@bank.example)"), "alice@acme.example",
     RULE_IMPERSONATION, ["billing@bank.example"]),
    ("IDN address in the display name", frm('"billing@bänk.example" <x@acme.example>'),
     "alice@acme.example", RULE_IMPERSONATION, ["(xn--bnk-qla.example)"]),
    ("quoted local part carrying an address", frm('"ceo@globex.example"@acme.example'),
     "alice@acme.example", RULE_IMPERSONATION, ["ceo@globex.example"]),
    ("Sender display name shows a foreign address",
     [*frm("a@acme.example"), ("Sender", '"it@globex.example" <a@acme.example>')],
     "alice@acme.example", RULE_IMPERSONATION, ["Sender header", "it@globex.example"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "headers", "mail_from", "rule", "words"),
    REFUSED_FOR_ACME,
    ids=[c[0] for c in REFUSED_FOR_ACME],
)
def test_foreign_identity_is_refused(
    settings: Settings, case: str, headers: Any, mail_from: str, rule: str, words: list[str]
) -> None:
    verdict = judge(settings, headers, mail_from=mail_from)
    assert verdict is not None, case
    assert (verdict.action, verdict.code, verdict.enhanced) == (Action.REJECT, "550", "5.7.1")
    assert verdict.rule == rule
    for word in words:
        assert word in verdict.text
    assert "acme.example" in verdict.text  # the account's own domains are named


def test_null_sender_bounces_are_not_checked_for_the_envelope(settings: Settings) -> None:
    assert judge(settings, frm("mailer-daemon@acme.example"), mail_from="") is None


def test_reply_lists_the_domains_of_the_account(settings: Settings) -> None:
    verdict = judge(settings, frm("x@globex.example"))
    assert "its domains: acme.example, xn--bcher-kva.example" in verdict.text


def test_subdomains_when_the_account_allows_them(settings: Settings) -> None:
    kwargs: dict[str, Any] = {
        "account": "initech",
        "login": "peter@initech.example",
        "mail_from": "peter@mail.initech.example",
    }
    assert judge(settings, frm("peter@mail.initech.example"), **kwargs) is None
    assert judge(settings, frm("peter@deep.sub.initech.example"), **kwargs) is None
    refused = judge(settings, frm("peter@notinitech.example"), **kwargs)
    assert refused is not None and "and their subdomains" in refused.text


def test_sendmail_envelope_on_the_mta_host_name_is_the_mtas_own(settings: Settings) -> None:
    """sendmail(1) without -f makes up user@myhostname: not a forgery by the customer."""
    local = {"login": None, "local": True, "mail_from": "www-data@mta.provider.example"}
    assert judge(settings, frm("alice@acme.example"), **local) is None
    # Over SMTP the same envelope is the customer's claim, and not theirs to make.
    smtp = judge(settings, frm("alice@acme.example"), mail_from="www-data@mta.provider.example")
    assert smtp is not None and smtp.rule == RULE_FORGED_SENDER
    # The From header stays the customer's business even for local mail.
    assert judge(settings, frm("www-data@mta.provider.example"), **local) is not None


# -- malformed identity headers ------------------------------------------------------

MALFORMED = [
    ("no From", [("To", "x@example.net"), ("Subject", "hi")], "no From header"),
    ("two From headers", [("From", "a@acme.example"), ("From", "b@acme.example")],
     "2 From headers"),
    ("From case variants count as one name",
     [("From", "a@acme.example"), ("FROM", "a@acme.example")],
     "2 From headers"),
    ("empty From", frm(""), "From header is empty"),
    ("From without @", frm("alice"), "cannot be parsed"),
    ("From with an empty domain", frm("Alice <alice@>"), "cannot be parsed"),
    ("From with garbage after the address", frm("Alice <alice@acme.example> trailing"),
     "cannot be parsed"),
    ("unterminated angle address", frm("Alice <alice@acme.example"), "cannot be parsed"),
    ("unterminated quote", frm('"a@b <'), "cannot be parsed"),
    ("two angle addresses", frm("x <a@acme.example> <b@acme.example>"), "cannot be parsed"),
    ("null address", frm("<>"), "cannot be parsed"),
    ("group", frm("undisclosed-recipients:;"), "names a group"),
    ("group with members", frm("team: a@acme.example;"), "names a group"),
    ("bytes that are not UTF-8", frm("Alice \udcff <alice@acme.example>"), "not valid UTF-8"),
    ("a label too long for a domain", frm(f"a@{'x' * 64}.example"), "invalid domain"),
    ("an invalid IDN domain", frm("a@bü\u200dcher.example"), "invalid domain"),
    ("display name with a bare @ (unquoted)", frm("billing@bank.example <x@acme.example>"),
     "cannot be parsed"),
    ("two Sender headers", [*frm("a@acme.example"), ("Sender", "a@acme.example"),
                            ("Sender", "b@acme.example")], "2 Sender headers"),
    ("Sender with two addresses",
     [*frm("a@acme.example"), ("Sender", "a@acme.example, b@acme.example")],
     "exactly one address"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "headers", "words"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_identity_headers_are_refused(
    settings: Settings, case: str, headers: Any, words: str
) -> None:
    verdict = judge(settings, headers)
    assert verdict is not None, case
    assert (verdict.rule, verdict.code, verdict.enhanced) == (RULE_MALFORMED, "550", "5.7.1")
    assert words in verdict.text
    assert "account acme" in verdict.text


def test_malformed_headers_are_refused_for_unknown_senders_too(settings: Settings) -> None:
    verdict = judge(settings, [("Subject", "hi")], account=None, login=None, trusted=True)
    assert verdict is not None and verdict.rule == RULE_MALFORMED
    assert "account host:203.0.113.5" in verdict.text


# -- a proven sender no account lists (trusted network, no login) --------------------

UNKNOWN_SENDER = [
    # (case, headers, mail_from, refused?)
    ("a stranger's domain is fine", frm("news@shop.example"), "news@shop.example", False),
    ("a free-mail From is fine", frm("someone@gmail.example"), "", False),
    ("another customer's From", frm("ceo@globex.example"), "news@shop.example", True),
    ("another customer's IDN From", frm("x@bücher.example"), "news@shop.example", True),
    ("a subdomain of a customer's domain", frm("x@mail.globex.example"), "news@shop.example", True),
    ("a customer's Sender", [*frm("a@shop.example"), ("Sender", "x@acme.example")],
     "news@shop.example", True),
    ("a customer's address in the display name", frm('"ceo@globex.example" <a@shop.example>'),
     "news@shop.example", True),
    ("a customer's address in an encoded word",
     frm("=?utf-8?q?ceo=40globex.example?= <a@shop.example>"), "news@shop.example", True),
    ("a customer's envelope domain", frm("a@shop.example"), "x@globex.example", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "headers", "mail_from", "refused"), UNKNOWN_SENDER, ids=[c[0] for c in UNKNOWN_SENDER]
)
def test_unknown_sender_may_not_impersonate_a_customer(
    settings: Settings, case: str, headers: Any, mail_from: str, refused: bool
) -> None:
    verdict = judge(settings, headers, account=None, login=None, trusted=True, mail_from=mail_from)
    if not refused:
        assert verdict is None
        return
    assert verdict is not None
    assert (verdict.rule, verdict.code, verdict.enhanced) == (RULE_IMPERSONATION, "550", "5.7.1")
    assert "another customer" in verdict.text
    assert "globex" not in verdict.text.replace("globex.example", "")  # no account id leaked


UNLISTED_LOGIN = [
    # (login, From, MAIL FROM, rule or None)
    ("bob@freemail.example", "bob@freemail.example", "bob@freemail.example", None),
    ("bob@freemail.example", "Bob <other@FreeMail.example>", "bob@freemail.example", None),
    ("bob@freemail.example", "a@acme.example", "bob@freemail.example", RULE_IMPERSONATION),
    ("bob@freemail.example", "bob@freemail.example", "x@globex.example", RULE_IMPERSONATION),
    ("bob@freemail.example", "bob@elsewhere.example", "bob@freemail.example", RULE_FORGED_SENDER),
    ("bob@freemail.example", "bob@freemail.example", "bob@elsewhere.example", RULE_FORGED_SENDER),
    ("bob@freemail.example", '"x@elsewhere.example" <bob@freemail.example>',
     "bob@freemail.example", RULE_FORGED_SENDER),
    # An unlisted login under a customer's domain gets no domain: any but a customer's.
    ("mallory@mail.acme.example", "m@acme.example", "m@acme.example", RULE_IMPERSONATION),
    ("mallory@mail.acme.example", "m@shop.example", "m@shop.example", None),
    # A login in a customer's own domain is that customer (issue 11): held to its domains.
    ("mallory@acme.example", "m@acme.example", "m@acme.example", None),
    ("mallory@acme.example", "m@shop.example", "m@shop.example", RULE_FORGED_SENDER),
    ("mallory", "m@shop.example", "", None),
    ("mallory", "m@globex.example", "", RULE_IMPERSONATION),
]  # fmt: skip


@pytest.mark.parametrize(("login", "from_", "mail_from", "rule"), UNLISTED_LOGIN)
def test_unlisted_login_uses_its_own_domain_and_never_a_customers(
    settings: Settings, login: str, from_: str, mail_from: str, rule: str | None
) -> None:
    verdict = judge(settings, frm(from_), account=None, login=login, mail_from=mail_from)
    assert (verdict.rule if verdict else None) == rule, verdict
    if verdict is not None:
        assert (verdict.code, verdict.enhanced) == ("550", "5.7.1")


def test_inbound_mail_from_the_internet_is_not_judged(settings: Settings) -> None:
    """Untrusted, not logged in: mail to the provider's own domains (SPF/DMARC's job)."""
    for headers in (frm("ceo@globex.example"), [("Subject", "no From at all")]):
        assert judge(settings, headers, account=None, login=None) is None


# -- the parsing helpers -------------------------------------------------------------


def test_rendered_decodes_and_folds_look_alikes() -> None:
    assert rendered("=?utf-8?q?a=40b=2Ec?= <x@y.z>") == "a@b.c <x@y.z>"
    assert rendered("=?iso-8859-1?q?J=F6rg?=") == "Jörg"
    assert rendered("Jörg =?utf-8?q?x?=") == "Jörg x"
    assert rendered("a\uff20b\uff0ec") == "a@b.c"
    assert rendered("=?x-unknown?q?a=40b.c?=") == "a@b.c"  # unknown charset: still checked


def test_parse_mailboxes_normalises_domains() -> None:
    (mailbox,) = parse_mailboxes("From", "Jörg <Jörg@Bücher.Example>")
    assert (mailbox.display_name, mailbox.address, mailbox.domain) == (
        "Jörg",
        "Jörg@xn--bcher-kva.example",
        "xn--bcher-kva.example",
    )


def test_parse_mailboxes_never_raises_anything_but_malformed() -> None:
    for hostile in ['"a@b" <', "<", ">", "@", "a@", "<@>", ",,,", "(", '"', "\\", "a@b@c"]:
        with contextlib.suppress(MalformedHeader):
            parse_mailboxes("From", hostile)


def test_shown_addresses_finds_only_dotted_domains() -> None:
    shown = shown_addresses("From", '"x@y" "billing@bank.example." <a@b.example>')
    assert [(s.text, s.domain) for s in shown] == [
        ("billing@bank.example", "bank.example"),
        ("a@b.example", "b.example"),
    ]


def test_read_identity_keeps_the_sender() -> None:
    identity = read_identity([("From", "a@b.example"), ("Sender", "Sec <s@b.example>")])
    assert identity.sender is not None and identity.sender.address == "s@b.example"


def test_the_identity_is_read_once_per_message_and_again_when_headers_come(
    settings: Settings,
) -> None:
    """The identity rule and the DKIM signer share one reading; a header added
    later (a second From) is not missed, and a malformed reading stays malformed."""
    txn = txn_for(settings, [("From", "Alice <alice@acme.example>")])
    first = transaction_identity(txn)
    assert transaction_identity(txn) is first
    assert [m.address for m in first.from_mailboxes] == ["alice@acme.example"]
    txn.headers.append(("From", "Mallory <m@globex.example>"))
    for _ in range(2):
        with pytest.raises(MalformedHeader, match="2 From headers"):
            transaction_identity(txn)
    verdict = identity_verdict(txn, AccountDirectory(settings.accounts))
    assert verdict is not None and verdict.rule == RULE_MALFORMED
