"""The DKIM signer: what it signs, with which key, and that dkimpy verifies the result
of the message as the MTA will write it (no I/O: a fixed test key, dkimpy's dnsfunc)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import dkim
import pytest

from sendwarden.checks.base import Check
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.dkim.signer import (
    DkimSigner,
    SigningKey,
    choose_key,
    dkim_signature,
    headers_after_changes,
    key_for_domain,
    signers_from_settings,
)
from sendwarden.pipeline import Pipeline
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import Action, Verdict, reject

# A 1024-bit key for unit tests only (the CLI writes 2048-bit keys).
TEST_KEY = b"""-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQC2GLmqGV32b7RkSqs+NtZ6QB3piUbVUuxHbv8iI4ZBuA5/seCj
XpqDTw4MDfA2V8bmZybcEdHXh4COOTwM0ce5i3VQm+llURRlGemyXgJ9USJdpfyP
BFqHKdUVKNas8uTXZuXNZ5v0uQhUqH5IoGrpZH0OHLMcCQs/aNRTyvEHfQIDAQAB
AoGAZDdPVxIG6G2ptdhyThcYCsfmrnRii1zLtLSdrUgnx1tof1aB7udN2h5T+MZj
AUVlrb/vXwZfmmJ0mdFd/yAk7kXMbdiyJL87j+UTICFqPbrkIp537h0GmJ46UvVZ
4qN0z8FwOC57dEXwjuQ32vDb+DaudlhNk5zGVgxVfdwt+vECQQDuENaCUq2AI1aO
wsvb0aDJi8j/XKrAMYBstCzKVvqjGb2r47C5J3JeWRjDQaBFR5aSb1ZvnJE9Sl0e
nKY4h3VnAkEAw9CBrB0jaFkAdQrewQgDXDjhWCmjyK79rR+ma2kgOz4IOc1D5f15
r2WVEMTat1vtXH8hqvWUvpD39ifSA40JewJBAJ4cJLttObnuvmAWU9psgUMaSaX/
34/B0K9hgpXn6pJEWEo+8HIoFrc+qUmU3mLkxsX+mAOMkpGIQAxCscq9fGUCQQCZ
1EqaiMWRKyJF0IVQRdhF8dVt6kBl3rsg71VQ2mRcxg22QwBNRMT8uqPRaaSdGVWu
LZ2obYct8jsqIPxGl9zTAkEAg16F4iPTrG1XoAVLsaOgzbe/Il1LXwIsZoHoweNr
gUW5dnJK3YuHi1o8YSWl/oJGAWlgm7fvi+l4I/49cJOsKQ==
-----END RSA PRIVATE KEY-----
"""
TEST_PUBLIC = (
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC2GLmqGV32b7RkSqs+NtZ6QB3piUbVUuxHbv8iI4ZBuA5/"
    "seCjXpqDTw4MDfA2V8bmZybcEdHXh4COOTwM0ce5i3VQm+llURRlGemyXgJ9USJdpfyPBFqHKdUVKNas8uT"
    "XZuXNZ5v0uQhUqH5IoGrpZH0OHLMcCQs/aNRTyvEHfQIDAQAB"
)
KEYS = {
    domain: SigningKey.from_pem(domain, "unit", TEST_KEY, "the test key")
    for domain in ("acme.example", "initech.example", "xn--bcher-kva.example")
}
PUBLISHED = {
    f"unit._domainkey.{domain}.".encode(): f"v=DKIM1; k=rsa; p={TEST_PUBLIC}".encode()
    for domain in KEYS
}


def dns(name: bytes, timeout: int = 5) -> bytes | None:
    return PUBLISHED.get(name)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return settings_from_mapping(
        {
            "accounts": [
                {"id": "acme", "logins": ["alice@acme.example"],
                 "domains": ["acme.example", "bücher.example"]},
                {"id": "initech", "logins": ["peter@initech.example"],
                 "domains": ["initech.example"], "allow_subdomains": True},
                {"id": "globex", "logins": ["bob@globex.example"],
                 "domains": ["globex.example", "sub.acme.example"]},
            ]
        }
    )  # fmt: skip


HEADERS = [
    ("From", "Alice Example <alice@acme.example>"),
    ("To", "Bob <bob@example.net>,\n\tCarol <carol@example.net>"),
    ("Subject", "Gr\u00fc\u00dfe   aus  Acme".encode().decode("utf-8", "surrogateescape")),
    ("Date", "Sun, 22 Nov 2026 07:27:09 +0000"),
    ("Message-Id", "<1@acme.example>"),
    ("List-Unsubscribe", "<https://acme.example/u/1>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("X-Spaces", "   lots   of  space   "),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
]
BODY = b"Hello  Bob,\r\n\r\ntrailing spaces   \r\n" + b"line\r\n" * 3000 + b"\r\n\r\n"


def transaction(
    settings: Settings,
    headers: list[tuple[str, str]] | None = None,
    *,
    account: str | None = "acme",
    identified: bool = True,
) -> Transaction:
    txn = Transaction(
        client=Client(ipaddress.ip_address("203.0.113.5"), "client.example"),
        login=f"{account}-login" if identified and account else None,
        mail_from="alice@acme.example",
    )
    txn.headers = list(HEADERS if headers is None else headers)
    if account is not None:
        txn.account = settings.account(account)
        txn.account_source = "login" if identified else ""
    return txn


def sign(signer: Check, txn: Transaction, body: bytes = BODY, chunk: int = 65535) -> None:
    for start in range(0, len(body), chunk):
        signer.at_body(txn, body[start : start + chunk])
    assert signer.at_eom(txn) is None


def as_written(txn: Transaction, body: bytes = BODY) -> bytes:
    """The message as the MTA writes it once the changes are applied."""
    lines = [f"{name}: {value}" for name, value in headers_after_changes(txn)]
    head = "\r\n".join(line.replace("\n", "\r\n") for line in lines)
    return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def signature_tags(txn: Transaction) -> dict[str, str]:
    (value,) = [value for name, value in txn.changes.add_headers if name == "DKIM-Signature"]
    flat = re.sub(r"\s+", "", value)
    return dict(tag.split("=", 1) for tag in flat.split(";") if tag)


def test_signed_message_verifies(settings: Settings) -> None:
    txn = transaction(settings)
    sign(DkimSigner(KEYS.values(), clock=lambda: 1_700_000_000), txn)
    tags = signature_tags(txn)
    assert (tags["d"], tags["s"], tags["c"], tags["a"], tags["t"]) == (
        "acme.example", "unit", "relaxed/relaxed", "rsa-sha256", "1700000000",
    )  # fmt: skip
    assert tags["h"].split(":") == [
        "from", "to", "subject", "date", "message-id", "list-unsubscribe",
        "list-unsubscribe-post", "mime-version", "content-type", "from",
    ]  # fmt: skip
    assert dkim.verify(as_written(txn), dnsfunc=dns)


def test_signature_survives_refolding_and_respacing(settings: Settings) -> None:
    """relaxed/relaxed: an MTA may refold headers and respace them."""
    txn = transaction(settings)
    sign(DkimSigner(KEYS.values()), txn)
    message = as_written(txn)
    message = message.replace(b"Subject: Gr", b"Subject:   Gr").replace(
        b"Bob <bob@example.net>,\r\n\tCarol", b"Bob <bob@example.net>, Carol"
    )
    message = message.replace(b"trailing spaces   \r\n", b"trailing spaces\t\r\n")
    assert dkim.verify(message, dnsfunc=dns)


def test_tampering_breaks_the_signature(settings: Settings) -> None:
    txn = transaction(settings)
    sign(DkimSigner(KEYS.values()), txn)
    message = as_written(txn)
    assert not dkim.verify(message.replace(b"Hello  Bob", b"Hello Eve"), dnsfunc=dns)
    assert not dkim.verify(message.replace(b"aus  Acme", b"aus Evil"), dnsfunc=dns)
    second_from = message.replace(b"\r\n\r\n", b"\r\nFrom: ceo@acme.example\r\n\r\n", 1)
    assert not dkim.verify(second_from, dnsfunc=dns)  # From is oversigned


def test_signs_the_headers_as_changed_by_other_checks(settings: Settings) -> None:
    txn = transaction(settings)
    txn.headers.append(("Subject", "a second subject, stripped by a check"))
    txn.changes.remove_headers.append(("Subject", 2))
    txn.changes.add_headers.append(("Reply-To", "support@acme.example"))
    sign(DkimSigner(KEYS.values()), txn)
    assert "reply-to" in signature_tags(txn)["h"].split(":")
    assert dkim.verify(as_written(txn), dnsfunc=dns)


def test_empty_body_without_body_callbacks(settings: Settings) -> None:
    txn = transaction(settings)
    assert DkimSigner(KEYS.values()).at_eom(txn) is None
    assert dkim.verify(as_written(txn, b""), dnsfunc=dns)


def test_internationalised_from_domain(settings: Settings) -> None:
    txn = transaction(settings, [("From", "Jörg <jörg@Bücher.example>"), ("Subject", "ü")])
    sign(DkimSigner(KEYS.values()), txn)
    assert signature_tags(txn)["d"] == "xn--bcher-kva.example"
    assert dkim.verify(as_written(txn), dnsfunc=dns)


def test_subdomain_mail_is_signed_with_the_parent_domain_key(settings: Settings) -> None:
    txn = transaction(settings, [("From", "peter@mail.initech.example")], account="initech")
    sign(DkimSigner(KEYS.values()), txn)
    assert signature_tags(txn)["d"] == "initech.example"
    assert dkim.verify(as_written(txn), dnsfunc=dns)


NOT_SIGNED = [
    ("no key for the From domain", "globex", [("From", "bob@globex.example")], True),
    ("From not owned by the account", "acme", [("From", "x@initech.example")], True),
    ("key domain not owned by the account", "globex", [("From", "x@sub.acme.example")], True),
    ("no known account", None, HEADERS, True),
    ("not identified (inbound)", "acme", HEADERS, False),
    ("malformed From", "acme", [("From", "not an address")], True),
    ("no From", "acme", [("Subject", "x")], True),
]


@pytest.mark.parametrize(
    ("case", "account", "headers", "identified"), NOT_SIGNED, ids=[c[0] for c in NOT_SIGNED]
)
def test_not_signed(
    settings: Settings,
    case: str,
    account: str | None,
    headers: list[tuple[str, str]],
    identified: bool,
) -> None:
    txn = transaction(settings, headers, account=account, identified=identified)
    sign(DkimSigner(KEYS.values()), txn)
    assert txn.changes.add_headers == []


def test_trusted_network_sender_of_a_known_account_is_signed(settings: Settings) -> None:
    txn = transaction(settings, identified=False)
    txn.trusted = True
    sign(DkimSigner(KEYS.values()), txn)
    assert dkim.verify(as_written(txn), dnsfunc=dns)


@pytest.mark.parametrize(
    ("account_id", "login", "trusted"),
    [
        ("host:127.0.0.1", None, True),  # a trusted host no account lists
        ("login:mallory@acme.example", "mallory@acme.example", False),  # unlisted login
    ],
)
def test_an_unlisted_sender_is_never_signed_with_a_customers_key(
    settings: Settings, account_id: str, login: str | None, trusted: bool
) -> None:
    """Even handed an account that claims the domain: only a listed account's key signs."""
    txn = transaction(settings, account=None)
    txn.login, txn.trusted = login, trusted
    unlisted = AccountDirectory(settings.accounts).get(account_id)
    assert unlisted is not None
    txn.account = dataclasses.replace(unlisted, domains=("acme.example",))
    txn.account_source = "login" if login else "trusted-network"
    sign(DkimSigner(KEYS.values()), txn)
    assert txn.changes.add_headers == []


def test_body_is_not_hashed_when_no_key_can_sign(settings: Settings) -> None:
    signer = DkimSigner(KEYS.values())
    txn = transaction(settings, [("From", "bob@globex.example")], account="globex")
    signer.at_body(txn, b"body")
    assert txn.scratch[signer.name] == "skip"


def test_key_choice() -> None:
    assert key_for_domain("a.b.acme.example", KEYS) is KEYS["acme.example"]
    assert key_for_domain("acme.example.net", KEYS) is None
    settings = settings_from_mapping(
        {"accounts": [{"id": "a", "domains": ["globex.example", "acme.example"]}]}
    )
    account = settings.account("a")
    # The first From domain with a key the account owns.
    assert choose_key(["globex.example", "acme.example"], account, KEYS) is KEYS["acme.example"]
    assert choose_key(["sub.acme.example"], account, KEYS) is None  # no allow_subdomains


def test_signature_value_is_folded_for_libmilter() -> None:
    value = dkim_signature([("From", "a@acme.example")], b"\0" * 32, KEYS["acme.example"], 1)
    assert "\r" not in value and "\n " in value
    assert not value.startswith((" ", "\t"))


class Refuse(Check):
    name = "refuse"

    def at_eom(self, txn: Transaction) -> Verdict | None:
        return reject("test", "550", "5.7.1", "refused by a rule")


def test_a_refused_message_is_never_signed(settings: Settings) -> None:
    """The signer is last: the pipeline stops at the first refusal."""
    pipeline = Pipeline(settings, [Refuse(), DkimSigner(KEYS.values())])
    client = Client(ipaddress.ip_address("203.0.113.5"), "client.example")
    txn = pipeline.begin(client, login="alice@acme.example", mail_from="alice@acme.example")
    for name, value in HEADERS:
        pipeline.header(txn, name, value)
    pipeline.body(txn, BODY)
    assert pipeline.eom(txn).action is Action.REJECT
    assert txn.changes.add_headers == []
    assert pipeline.needs_body  # the signer asked for the body step


def test_domains_sharing_a_key_file_share_one_loaded_key(tmp_path: Path) -> None:
    """OpenSSL prepares a key on its first signature (twice that signature's cost):
    one loaded key per key file content, whatever the number of domains using it."""
    shared, other = tmp_path / "shared.key", tmp_path / "other.key"
    shared.write_bytes(TEST_KEY)
    other.write_bytes(TEST_KEY.replace(b"\n", b"\r\n"))  # another file, other bytes
    settings = settings_from_mapping(
        {
            "dkim": [
                {"domain": "acme.example", "selector": "s1", "key_file": str(shared)},
                {"domain": "initech.example", "selector": "s2", "key_file": str(shared)},
                {"domain": "globex.example", "selector": "s3", "key_file": str(other)},
            ]
        }
    )
    (signer,) = signers_from_settings(settings.dkim)
    assert isinstance(signer, DkimSigner)
    keys = signer._keys
    assert [(k.domain, k.selector) for k in keys.values()] == [
        ("acme.example", "s1"), ("initech.example", "s2"), ("globex.example", "s3"),
    ]  # fmt: skip
    assert keys["acme.example"].signing_key is keys["initech.example"].signing_key
    assert keys["globex.example"].signing_key is not keys["acme.example"].signing_key
