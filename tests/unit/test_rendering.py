"""What a mail client shows as the sender: the header grammar (comments, quoted
pairs, encoded words), Unicode folding, invisible and bidi characters, UTS #39
skeletons; and the identity rule judging what is shown."""

from __future__ import annotations

import ipaddress
import unicodedata

import icu
import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.config import settings_from_mapping
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.identity import (
    RULE_FORGED_SENDER,
    RULE_IMPERSONATION,
    RULE_MALFORMED,
    identity_verdict,
)
from sendwarden.policy.rendering import (
    _ASCII_PROTOTYPES,
    BidiControl,
    address_like,
    ascii_translated,
    domain_skeleton,
    domain_skeletons,
    rendered,
    skeleton,
    uncached_domain_skeleton,
    uncached_skeleton,
)
from sendwarden.policy.rfc5322 import Kind, comments, decode_encoded_words, tokens
from sendwarden.policy.verdict import Verdict

SETTINGS = settings_from_mapping(
    {
        "accounts": [
            {"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]},
            {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
            {"id": "paypal", "domains": ["paypal.example"]},
        ]
    }
)
DIRECTORY = AccountDirectory(SETTINGS.accounts)
CLIENT = Client(ipaddress.ip_address("203.0.113.5"), "client.example")


def judge(
    headers: list[tuple[str, str]],
    *,
    login: str | None = "alice@acme.example",
    trusted: bool = False,
    mail_from: str = "alice@acme.example",
) -> Verdict | None:
    """The identity verdict for a sender proven as the pipeline proves it."""
    txn = Transaction(client=CLIENT, trusted=trusted, login=login, mail_from=mail_from)
    attribution = DIRECTORY.resolve(
        login=login, uid=None, client_address=CLIENT.address, trusted=trusted
    )
    txn.account, txn.account_source = attribution.account, attribution.source
    txn.headers = [*headers, ("To", "x@remote.example"), ("Subject", "hi")]
    return identity_verdict(txn, DIRECTORY)


# -- the header grammar ---------------------------------------------------------------


def test_tokens_with_nested_comments_and_quoted_pairs() -> None:
    value = 'a (one (two \\) still) x) "q\\"uo\\\\te" [1.2.3.4] b.c;'
    assert [(t.kind, t.text) for t in tokens(value)] == [
        (Kind.ATOM, "a"),
        (Kind.COMMENT, "one (two ) still) x"),
        (Kind.QUOTED, 'q"uo\\te'),
        (Kind.LITERAL, "[1.2.3.4]"),
        (Kind.ATOM, "b.c"),
        (Kind.SPECIAL, ";"),
    ]
    assert comments("x (a (b (c)))") == ["a (b (c))", "b (c)", "c"]


def test_an_unclosed_comment_or_quote_runs_to_the_end() -> None:
    assert [t.text for t in tokens("a (b c")] == ["a", "b c"]
    assert [t.text for t in tokens('a "b c')] == ["a", "b c"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("=?utf-8?q?a=40b=2Ec?=", "a@b.c"),
        ("=?UTF-8?B?Y2VvQGdsb2JleC5leGFtcGxl?=", "ceo@globex.example"),
        ("=?utf-8?b?Y2VvQGdsb2JleC5leGFtcGxl?=", "ceo@globex.example"),  # no padding needed
        ("=?utf-8*en?q?ceo=40globex.example?=", "ceo@globex.example"),  # RFC 2231 language
        ("=?utf-8?q?ceo?= =?utf-8?q?=40globex.example?=", "ceo@globex.example"),  # 2047 6.2
        ("x=?utf-8?q?=40?=globex.example", "x@globex.example"),  # glued to text
        ("=?x-unknown?q?=E9?=", "é"),  # unknown charset: Latin-1, still shown
        ("=?utf-8?q?not encoded?=", "=?utf-8?q?not encoded?="),
    ],
)
def test_encoded_words(value: str, shown: str) -> None:
    assert decode_encoded_words(value) == shown


# -- rendering --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('"ceo\\@globex.example" <a@acme.example>', "ceo@globex.example <a@acme.example>"),
        ("c\u200beo@glo\u200dbex.exa\u00admple", "ceo@globex.example"),  # invisible
        ("ceo\ufe0f@globex\u2060.example\ufeff", "ceo@globex.example"),
        ("".join(chr(ord(c) + 0xFEE0) for c in "ceo@globex.example"), "ceo@globex.example"),
        ("ceo\ufe6bglobex\u2024example", "ceo@globex.example"),  # small @, one-dot leader
        ("Jörg\u00a0Müller", "Jörg Müller"),
    ],
)
def test_rendered_is_what_a_client_shows(value: str, shown: str) -> None:
    assert rendered(value) == shown


@pytest.mark.parametrize(
    "char", ["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u200f", "\u061c"]
)
def test_bidi_controls_are_refused(char: str) -> None:
    with pytest.raises(BidiControl, match=f"U\\+{ord(char):04X}"):
        rendered(f"x{char}elpmaxe.xebolg@oec")
    with pytest.raises(BidiControl):  # also when an encoded word hides it
        rendered(f"=?utf-8?b?{__import__('base64').b64encode(char.encode()).decode()}?=")


def test_skeletons_fold_look_alikes() -> None:
    assert skeleton("p\u0430ypal") == skeleton("paypal")  # Cyrillic a (U+0430)
    assert skeleton("g\u04cfobex") == skeleton("globex")  # Cyrillic palochka
    assert domain_skeleton("xn--pypal-4ve.example") == domain_skeleton("paypal.example")
    assert skeleton("acme") != skeleton("acne")


_ICU = icu.SpoofChecker()


def icu_skeleton(text: str) -> str:
    """The reference: ICU's skeleton of the whole string, NFC, case-folded."""
    return unicodedata.normalize("NFC", str(_ICU.getSkeleton(0, text))).casefold()


def icu_domain_skeleton(domain: str) -> str:
    """The reference for domains: every domain decoded by idna, then ICU."""
    try:
        shown = idna.decode(domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        shown = domain
    return icu_skeleton(shown.rstrip("."))


def test_the_ascii_fast_path_is_icu_on_every_character_and_pair() -> None:
    ascii_chars = [chr(code) for code in range(128)]
    for first in ascii_chars:
        assert uncached_skeleton(first) == icu_skeleton(first), repr(first)
        for second in ascii_chars:
            pair = first + second
            assert uncached_skeleton(pair) == icu_skeleton(pair), repr(pair)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_the_ascii_fast_path_is_icu_on_any_ascii_text(text: str) -> None:
    assert uncached_skeleton(text) == icu_skeleton(text)
    assert skeleton(text) == icu_skeleton(text)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_the_ascii_prototypes_translate_alike_as_bytes(text: str) -> None:
    """Control characters (the placeholders for "m" -> "rn") and "%" included."""
    assert ascii_translated(text) == text.translate(_ASCII_PROTOTYPES)


@given(st.text(max_size=30))
def test_skeleton_is_icu_on_any_text(text: str) -> None:
    assert uncached_skeleton(text) == icu_skeleton(text)


#: Domain-ish text with what changes a skeleton or an IDNA reading: upper case,
#: A-label prefixes (valid, fake and cut), digits and letters ICU folds, empty labels,
#: a trailing dot, characters IDNA refuses.
_DOMAIN_PIECES = st.sampled_from(
    [
        *("a", "b", "m", "rn", "0", "1", "l", "I", "M", "-", "_", ".", "%", "xn--", "XN--"),
        *('"', "`", "|", "\x00", "\x01"),
        *("xn--pypal-4ve", "xn---bbk", "xn--bbk", "paypal", "x" * 64, "\u0430"),
    ]
)


@given(st.lists(_DOMAIN_PIECES, max_size=12).map("".join))
def test_domain_skeleton_fast_path_is_idna_then_icu(domain: str) -> None:
    assert uncached_domain_skeleton(domain) == icu_domain_skeleton(domain)
    assert domain_skeleton(domain) == icu_domain_skeleton(domain)


_DOMAINS = st.lists(_DOMAIN_PIECES, max_size=12).map("".join)


@given(
    st.lists(_DOMAINS, max_size=8),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=300),
)
def test_domain_skeletons_in_bulk_are_each_domains_skeleton(
    odd: list[str], numbers: list[int]
) -> None:
    """Batches of plain domains with generated ones (A-labels, upper case, "%",
    trailing dots, Cyrillic) mixed in anywhere: each comes out as ICU's skeleton."""
    domains = [f"site{number}.example" for number in numbers]
    for position, domain in enumerate(odd):
        domains.insert((position * 37) % (len(domains) + 1), domain)
    assert domain_skeletons(domains) == [icu_domain_skeleton(domain) for domain in domains]


@given(st.text(alphabet=st.characters(max_codepoint=0x4FF), max_size=40))
def test_domain_skeleton_is_idna_then_icu_on_any_text(domain: str) -> None:
    assert uncached_domain_skeleton(domain) == icu_domain_skeleton(domain)


def test_address_like_reads_through_skeletons() -> None:
    found = {domain for _, domain in address_like(rendered("ceo\u0040gl\u043ebex.example"))}
    assert any(domain_skeleton(d) == domain_skeleton("globex.example") for d in found)
    assert address_like("Team @ Acme") == []
    assert address_like("ceo @ globex.example")[0] == ("ceo@globex.example", "globex.example")


# -- the rule: what is shown must be the account's ------------------------------------

REFUSED = [
    # (case, headers, rule)
    ("confusable domain in the display name",
     [("From", '"ceo@gl\u043ebex.example" <alice@acme.example>')], RULE_IMPERSONATION),
    ("zero-width space hides the address",
     [("From", '"ceo@\u200bglobex.example" <alice@acme.example>')], RULE_IMPERSONATION),
    ("quoted pair hides the at sign",
     [("From", '"ceo\\@globex.example" <alice@acme.example>')], RULE_IMPERSONATION),
    ("nested comment",
     [("From", "alice@acme.example (Alice (ceo@globex.example))")], RULE_IMPERSONATION),
    ("comment with quoted pairs",
     [("From", "alice@acme.example (ceo\\@globex\\.example \\(CEO\\))")], RULE_IMPERSONATION),
    ("RFC 2231 language in an encoded word",
     [("From", "=?utf-8*en?q?ceo=40globex.example?= <alice@acme.example>")], RULE_IMPERSONATION),
    ("spaces around the at sign",
     [("From", '"ceo @ globex.example" <alice@acme.example>')], RULE_IMPERSONATION),
    ("right-to-left override", [("From", '"\u202eelpmaxe.xebolg@oec" <alice@acme.example>')],
     RULE_MALFORMED),
    ("Resent-From of another domain",
     [("From", "alice@acme.example"), ("Resent-From", "ceo@globex.example")], RULE_FORGED_SENDER),
    ("Resent-Sender of another domain",
     [("From", "alice@acme.example"), ("Resent-Sender", "ceo@globex.example")],
     RULE_FORGED_SENDER),
    ("Resent-From display name",
     [("From", "alice@acme.example"), ("Resent-From", '"ceo@globex.example" <a@acme.example>')],
     RULE_IMPERSONATION),
    ("Resent-Sender with two addresses",
     [("From", "alice@acme.example"), ("Resent-Sender", "a@acme.example, b@acme.example")],
     RULE_MALFORMED),
    ("Sender display name with a look-alike",
     [("From", "alice@acme.example"), ("Sender", '"bob@gl\u043ebex.example" <a@acme.example>')],
     RULE_IMPERSONATION),
]  # fmt: skip


@pytest.mark.parametrize(("case", "headers", "rule"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_a_reader_sees_is_checked(
    case: str, headers: list[tuple[str, str]], rule: str
) -> None:
    verdict = judge(headers)
    assert verdict is not None, case
    assert (verdict.rule, verdict.code, verdict.enhanced) == (rule, "550", "5.7.1")


ACCEPTED = [
    ("own address in the display name", '"alice@acme.example" <alice@acme.example>'),
    ("look-alike of its own domain", '"alice@\u0430cme.example" <alice@acme.example>'),
    ("own address in a nested comment", "alice@acme.example (Alice (alice@acme.example))"),
    ("encoded own name", "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <alice@acme.example>"),
    ("right-to-left name without controls", "\u05d3\u05d5\u05d3 <alice@acme.example>"),
    ("a name with an at sign but no domain", '"Team @ Acme" <alice@acme.example>'),
]


@pytest.mark.parametrize(("case", "value"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_harmless_display_names_are_accepted(case: str, value: str) -> None:
    assert judge([("From", value), ("Resent-From", value)]) is None, case


@pytest.mark.parametrize(
    "from_",
    [
        "ceo@gl\u043ebex.example",  # a real From in a look-alike of a customer's domain
        '"ceo@globex.example" <news@shop.example>',
        "news@shop.example (ceo@gl\u043ebex.example)",
        "news@mail.gl\u043ebex.example",  # a subdomain of a look-alike
    ],
)
def test_unlisted_senders_may_not_use_a_look_alike_of_a_customers_domain(from_: str) -> None:
    verdict = judge([("From", from_)], login=None, trusted=True, mail_from="news@shop.example")
    assert verdict is not None and verdict.rule == RULE_IMPERSONATION
    assert "another customer" in verdict.text


def test_unlisted_senders_may_use_other_domains() -> None:
    headers = [("From", '"News" <news@shop.example>')]
    assert judge(headers, login=None, trusted=True, mail_from="news@shop.example") is None
