"""DKIM signing through a real Postfix: what arrives at the sink verifies with dkimpy
against the TXT record a loopback DNS server publishes, also after a second pass
through Postfix.

The key is made by the real ``generate_key`` (openssl, 2048 bits) and loaded by the
milter from its config, as in production.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from sendwarden.consent.model import EventKind
from sendwarden.consent.store import open_consent_store
from sendwarden.dkim.keys import generate_key, public_key_record
from tests.e2e.scenarios import record_consent
from tests.support.dns_server import TxtDnsServer
from tests.support.rig import Rig, start_rig
from tests.support.sink import Delivered

SELECTOR = "e2e"
ACCOUNTS = [
    # uid 65534 submits with sendmail(1): a proven identity (the envelope domain is not).
    {"id": "acme", "logins": ["alice@acme.example"], "uids": [65534], "domains": ["acme.example"]},
    {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
]
SASL_USERS = {"alice@acme.example": "alice-secret", "bob@globex.example": "bob-secret"}


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TxtDnsServer, Path]]:
    key_file = tmp_path_factory.mktemp("dkim") / "acme.key"
    pem = generate_key(key_file)
    with TxtDnsServer() as server:
        server.publish(f"{SELECTOR}._domainkey.acme.example", public_key_record(pem))
        yield server, key_file


@pytest.fixture(scope="module")
def signing_rig(dns_server: tuple[TxtDnsServer, Path]) -> Iterator[Rig]:
    _, key_file = dns_server
    dkim_table = {"domain": "acme.example", "selector": SELECTOR, "key_file": str(key_file)}
    with contextlib.ExitStack() as stack:
        rig = start_rig(
            stack,
            accounts=ACCOUNTS,
            sasl_users=SASL_USERS,
            policy={"provider_hostnames": ["mta.sendwarden.test"]},
            config_extra={"dkim": dkim_table},
        )
        try:
            opt_in(rig, "carol@remote.example")  # the awkward mail has List-Unsubscribe
            yield rig
        finally:
            print(rig.report())


def opt_in(rig: Rig, recipient: str) -> None:
    """Carol opted in to acme's mailings, in the ledger the milter reads."""
    assert rig.config_path is not None
    ledger = open_consent_store(f"sqlite:///{rig.config_path.parent / 'consent.db'}")
    try:
        record_consent(ledger, EventKind.GRANTED, [recipient])
    finally:
        ledger.close()


@pytest.fixture
def rig(signing_rig: Rig) -> Rig:
    signing_rig.sink.clear()
    return signing_rig


def verifies(delivered: Delivered, dns_server: tuple[TxtDnsServer, Path]) -> bool:
    return bool(dkim.verify(delivered.data, dnsfunc=dns_server[0].dnsfunc))


def tags(delivered: Delivered) -> dict[str, str]:
    value = " ".join(delivered.message.get_all("DKIM-Signature") or [])
    flat = re.sub(r"\s+", "", value)
    return dict(tag.split("=", 1) for tag in flat.split(";") if tag)


# Headers and a body that tempt an MTA to change things: folding, odd spacing, 8-bit
# UTF-8, lines starting with a dot (SMTP dot-stuffing), trailing blanks, several body
# chunks (Postfix hands a milter the body in 64 KiB pieces), trailing empty lines.
AWKWARD = (
    "From: Alice Example <alice@acme.example>\r\n"
    "To: Carol <carol@remote.example>,\r\n"
    "\tDave <dave@remote.example>\r\n"
    "Subject:   Gr\u00fc\u00dfe   aus\r\n  der Acme  \r\n"
    "Message-ID: <awkward-1@acme.example>\r\n"
    "List-Unsubscribe: <https://acme.example/u/1>, <mailto:leave@acme.example>\r\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Hallo  Carol,\t \r\n"
    ".a line that starts with a dot\r\n"
    "..and two\r\n"
    + "eine Zeile mit Umlauten \u00e4\u00f6\u00fc, und Leerzeichen am Ende   \r\n" * 5000
    + "\r\n\r\n\r\n"
).encode()


def test_signed_message_verifies_at_the_sink(
    rig: Rig, dns_server: tuple[TxtDnsServer, Path]
) -> None:
    with rig.smtp("alice@acme.example") as client:
        client.sendmail("alice@acme.example", ["carol@remote.example"], AWKWARD)
    (delivered,) = rig.sink.wait_for(1)
    signature = tags(delivered)
    assert (signature["d"], signature["s"], signature["c"]) == (
        "acme.example",
        SELECTOR,
        "relaxed/relaxed",
    )
    assert signature["h"].split(":") == [
        "from", "to", "subject", "message-id", "list-unsubscribe", "list-unsubscribe-post",
        "mime-version", "content-type", "content-transfer-encoding", "date", "from",
    ]  # fmt: skip
    assert len(delivered.data) > 3 * 65536  # several body chunks reached the milter
    assert verifies(delivered, dns_server)
    assert f"{SELECTOR}._domainkey.acme.example." in dns_server[0].queries


def test_still_verifies_after_postfix_relays_it_again(
    rig: Rig, dns_server: tuple[TxtDnsServer, Path]
) -> None:
    """The signed message goes through Postfix a second time (as inbound mail to a local
    domain: not signed again, only relayed) and still verifies."""
    with rig.smtp("alice@acme.example") as client:
        client.sendmail("alice@acme.example", ["carol@remote.example"], AWKWARD)
    (first,) = rig.sink.wait_for(1)
    with rig.smtp() as client:  # unauthenticated, untrusted: inbound to hosting.example
        client.sendmail("alice@acme.example", ["postmaster@hosting.example"], first.data)
    second = rig.sink.wait_for(2)[1]
    assert len(second.message.get_all("Received")) == 2
    assert len(second.message.get_all("DKIM-Signature")) == 1
    assert verifies(second, dns_server)


def test_tampered_message_fails(rig: Rig, dns_server: tuple[TxtDnsServer, Path]) -> None:
    with rig.smtp("alice@acme.example") as client:
        client.sendmail("alice@acme.example", ["carol@remote.example"], AWKWARD)
    (delivered,) = rig.sink.wait_for(1)
    tampered = Delivered(
        delivered.mail_from, delivered.rcpt_tos, delivered.data.replace(b"Hallo", b"Hello")
    )
    assert not verifies(tampered, dns_server)


def test_sendmail_submission_is_signed(rig: Rig, dns_server: tuple[TxtDnsServer, Path]) -> None:
    result = rig.sendmail(
        b"From: web@acme.example\nTo: carol@remote.example\nSubject: local\n\nfrom PHP\n",
        "web@acme.example",
        ["carol@remote.example"],
    )
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert tags(delivered)["d"] == "acme.example"
    assert verifies(delivered, dns_server)


def test_domain_without_a_key_is_delivered_unsigned(rig: Rig) -> None:
    with rig.smtp("bob@globex.example") as client:
        client.sendmail(
            "bob@globex.example",
            ["carol@remote.example"],
            b"From: bob@globex.example\r\nSubject: x\r\n\r\nhi\r\n",
        )
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.message["DKIM-Signature"] is None


def test_refused_message_is_never_signed_nor_delivered(rig: Rig) -> None:
    with rig.smtp("bob@globex.example") as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail(
            "bob@globex.example",
            ["carol@remote.example"],
            b"From: alice@acme.example\r\nSubject: x\r\n\r\nhi\r\n",
        )
    with rig.smtp("alice@acme.example") as client:
        client.sendmail(
            "alice@acme.example",
            ["carol@remote.example"],
            b"From: alice@acme.example\r\nSubject: after\r\n\r\nhi\r\n",
        )
    (delivered,) = rig.sink.wait_for(1)  # only the second one
    assert delivered.message["Subject"] == "after"
