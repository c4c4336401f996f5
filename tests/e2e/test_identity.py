"""Forged senders, impersonation and forged provider headers through a real Postfix,
with real SASL logins (Cyrus sasldb), the sendwarden milter and an SMTP sink.

Every refusal here is Postfix relaying the milter's end-of-message reply to the client.
"""

from __future__ import annotations

import base64
import contextlib
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.rig import Rig, start_rig

PROVIDER_HOST = "mta.sendwarden.test"  # the rig's Postfix myhostname
ACCOUNTS = [
    {"id": "acme", "logins": ["alice@acme.example"], "uids": [65534], "domains": ["acme.example"]},
    {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]},
]
SASL_USERS = {"alice@acme.example": "alice-secret", "bob@globex.example": "bob-secret"}
POLICY = {"provider_hostnames": [PROVIDER_HOST], "authserv_id": "auth.sendwarden.test"}


def message(*headers: str, body: str = "Hello.\r\n") -> bytes:
    return ("\r\n".join([*headers, "To: carol@remote.example", "Subject: e2e"]) + "\r\n\r\n"
            + body).encode()  # fmt: skip


@contextlib.contextmanager
def shared(**kwargs: Any) -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        rig = start_rig(stack, accounts=ACCOUNTS, sasl_users=SASL_USERS, **kwargs)
        try:
            yield rig
        finally:
            print(rig.report())


@pytest.fixture(scope="module")
def refusing_rig() -> Iterator[Rig]:
    """Default forged_header_action (refuse); no trusted networks."""
    with shared(policy=POLICY) as rig:
        yield rig


@pytest.fixture
def rig(refusing_rig: Rig) -> Rig:
    refusing_rig.sink.clear()
    return refusing_rig


def refused_at_end_of_message(rig: Rig, login: str, mail_from: str, data: bytes) -> str:
    """Send as ``login``; the 550 5.7.1 reply text (the test fails if it was accepted)."""
    with rig.smtp(login) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(mail_from, ["carol@remote.example"], data)
    code, text = refused.value.smtp_code, refused.value.smtp_error.decode()
    assert code == 550, text
    assert text.startswith("5.7.1 "), text
    return text


def test_own_domain_is_accepted(rig: Rig) -> None:
    with rig.smtp("alice@acme.example") as client:
        client.sendmail(
            "alice@acme.example",
            ["carol@remote.example"],
            message('From: "Alice (acme.example)" <alice@ACME.example>'),
        )
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.message["From"] == '"Alice (acme.example)" <alice@ACME.example>'


def test_another_customers_domain_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig, "alice@acme.example", "alice@acme.example", message("From: CEO <ceo@globex.example>")
    )
    assert "Forged sender refused: the From header address ceo@globex.example" in text
    assert "account acme" in text


def test_envelope_sender_of_another_customer_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig, "alice@acme.example", "ceo@globex.example", message("From: alice@acme.example")
    )
    assert "envelope sender (MAIL FROM) ceo@globex.example" in text


def test_display_name_spoof_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig,
        "alice@acme.example",
        "alice@acme.example",
        message('From: "billing@bank.example" <alice@acme.example>'),
    )
    assert "Impersonation refused" in text and "billing@bank.example" in text


def test_encoded_word_display_name_spoof_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig,
        "alice@acme.example",
        "alice@acme.example",
        message("From: =?utf-8?b?c3VwcG9ydEBnbG9iZXguZXhhbXBsZQ==?= <alice@acme.example>"),
    )
    assert "support@globex.example" in text


def test_two_from_headers_are_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig,
        "alice@acme.example",
        "alice@acme.example",
        message("From: alice@acme.example", "From: ceo@globex.example"),
    )
    assert "Malformed message header from account acme" in text
    assert "2 From headers" in text


def test_forged_provider_received_header_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig,
        "alice@acme.example",
        "alice@acme.example",
        message(
            f"Received: from trusted.example by {PROVIDER_HOST} (Postfix) with ESMTPA id X1",
            "From: alice@acme.example",
        ),
    )
    assert "Forged header refused for account acme: the message carries a Received header" in text
    assert PROVIDER_HOST in text


def test_the_other_customer_is_held_to_its_own_domains(rig: Rig) -> None:
    with rig.smtp("bob@globex.example") as client:
        client.sendmail(
            "bob@globex.example", ["carol@remote.example"], message("From: bob@globex.example")
        )
    rig.sink.wait_for(1)
    text = refused_at_end_of_message(
        rig, "bob@globex.example", "bob@globex.example", message("From: alice@acme.example")
    )
    assert "account globex" in text


def test_sendmail_submission_is_judged_at_end_of_message(rig: Rig) -> None:
    """Local mail (PHP mail()): own From arrives; a spoofed From bounces with our reason."""
    ok = rig.sendmail(
        message("From: web@acme.example"), "web@acme.example", ["carol@remote.example"]
    )
    assert ok.returncode == 0, ok.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.mail_from == "web@acme.example"

    rig.sink.clear()
    spoof = rig.sendmail(
        message("From: ceo@globex.example"), "web@acme.example", ["carol@remote.example"]
    )
    assert spoof.returncode == 0  # sendmail(1) queues; the refusal comes back as a bounce
    (bounce,) = rig.sink.wait_for(1)
    assert bounce.mail_from == "" and bounce.rcpt_tos == ("web@acme.example",)
    report = " ".join(bounce.data.decode(errors="replace").split())  # Postfix wraps lines
    assert "Forged sender refused: the From header address ceo@globex.example" in report


# -- strip mode, and a trusted network with no login --------------------------------


@pytest.fixture(scope="module")
def stripping_rig() -> Iterator[Rig]:
    policy = {**POLICY, "forged_header_action": "strip", "trusted_networks": ["127.0.0.1/32"]}
    with shared(policy=policy) as rig:
        yield rig


def test_strip_mode_delivers_without_the_forged_headers(stripping_rig: Rig) -> None:
    stripping_rig.sink.clear()
    with stripping_rig.smtp("alice@acme.example") as client:
        client.sendmail(
            "alice@acme.example",
            ["carol@remote.example"],
            message(
                "Received: from a.example by b.example id OTHER",
                f"Received: from evil.example by {PROVIDER_HOST} id FORGED",
                "Authentication-Results: auth.sendwarden.test; dkim=pass",
                "X-Sendwarden-Verdict: accept",
                "From: alice@acme.example",
            ),
        )
    (delivered,) = stripping_rig.sink.wait_for(1)
    received = delivered.message.get_all("Received")
    assert len(received) == 2  # Postfix's own, and the honest one from b.example
    assert received[0].startswith("from ") and f"by {PROVIDER_HOST} (Postfix)" in received[0]
    assert "id OTHER" in received[1]
    assert "FORGED" not in delivered.data.decode()
    assert delivered.message["Authentication-Results"] is None
    assert delivered.message["X-Sendwarden-Verdict"] is None


def test_unknown_trusted_sender_may_not_use_a_customers_domain(stripping_rig: Rig) -> None:
    stripping_rig.sink.clear()
    with stripping_rig.smtp() as client:  # trusted network, no login, no account
        client.sendmail(
            "news@shop.example", ["carol@remote.example"], message("From: news@shop.example")
        )
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(
                "news@shop.example", ["carol@remote.example"], message("From: ceo@globex.example")
            )
    assert refused.value.smtp_code == 550
    assert b"another customer of this provider" in refused.value.smtp_error
    (delivered,) = stripping_rig.sink.wait_for(1)
    assert delivered.message["From"] == "news@shop.example"


# -- what a reader sees, and sender-routed addresses ---------------------------------


def encoded(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


@pytest.mark.parametrize(
    ("from_", "words"),
    [
        # a Cyrillic o (U+043E) in globex: a reader sees ceo@globex.example
        (encoded("ceo@gl\u043ebex.example") + " <alice@acme.example>", "Impersonation refused"),
        ('"ceo\u200b@globex.example" <alice@acme.example>', "Impersonation refused"),
        ("alice@acme.example (Alice (ceo\\@globex.example))", "Impersonation refused"),
        (encoded("\u202eelpmaxe.xebolg@oec") + " <alice@acme.example>", "U+202E"),
    ],
)
def test_what_a_reader_sees_is_judged(rig: Rig, from_: str, words: str) -> None:
    data = message(f"From: {from_}")  # raw UTF-8 where not encoded (SMTPUTF8 is on)
    text = refused_at_end_of_message(rig, "alice@acme.example", "alice@acme.example", data)
    assert words in text


def test_a_resent_from_of_another_customer_is_refused(rig: Rig) -> None:
    text = refused_at_end_of_message(
        rig,
        "alice@acme.example",
        "alice@acme.example",
        message("From: alice@acme.example", "Resent-From: ceo@globex.example"),
    )
    assert "the Resent-From header address ceo@globex.example" in text


@pytest.mark.parametrize(
    "recipient",
    ["bob%remote.example@hosting.example", "remote.example!bob@hosting.example",
     '"bob@remote.example"@hosting.example'],
)  # fmt: skip
def test_sender_routed_local_parts_from_strangers_are_relay(rig: Rig, recipient: str) -> None:
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("x@elsewhere.example", [recipient], message("From: x@elsewhere.example"))
    code, text = refused.value.recipients[recipient]
    assert code == 554 and text.startswith(b"5.7.1 Relaying denied"), text
    assert b"routes mail onward" in text
