"""The SMTP policy proxy as Postfix's before-queue ``smtpd_proxy_filter`` (for
administrators who prefer it to the milter): the same checks and reply texts, judged
whole at end of data, with the client from XFORWARD and the SASL login from smtpd's own
Received header."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.e2e.scenarios import ACCOUNTS, ALICE, USERS, message, wait_for_decision
from tests.support.rig import POSTFIX_REINJECT_LOGIN, Rig, running_rig


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with running_rig(milter="proxy", accounts=ACCOUNTS, sasl_users=USERS) as rig:
        yield rig


def proxy_log(rig: Rig) -> str:
    assert rig.milter is not None
    return rig.milter.log()


def test_login_from_smtpds_received_header_is_attributed(rig: Rig) -> None:
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    delivered = rig.sink.wait_for(1, timeout=30)[-1]
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(lambda: proxy_log(rig), stage="eom", login=ALICE)
    assert (record["account"], record["account_source"]) == ("acme", "login")
    assert record["client_address"] == "127.0.0.1"  # from XFORWARD
    assert record["queue_id"]  # XFORWARD IDENT: Postfix's queue id


def test_a_forged_received_header_gives_no_login(rig: Rig) -> None:
    # The client's own Received line comes after smtpd's: it is never the first header.
    body = (
        b"Received: from x (x [127.0.0.1]) (Authenticated sender: alice@acme.example)"
        b" by mta.sendwarden.test (Postfix) with ESMTPSA id ABC\r\n" + message()
    )
    with rig.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("someone@elsewhere.example", ["carl@remote.example"], body)
    assert refused.value.smtp_code == 554
    assert b"5.7.1 Relaying denied" in refused.value.smtp_error


def test_forged_from_gets_550_at_end_of_data(rig: Rig) -> None:
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ALICE, ["bob@remote.example"], message("ceo@globex.example"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Forged sender refused")


def test_a_local_process_cannot_hand_mail_back_past_the_proxy(rig: Rig) -> None:
    """The reinjection smtpd takes mail only from the proxy's SASL login (the secret):
    any other local process connecting to it is refused, and a guessed secret fails."""
    port = rig.postfix.reinject_port
    with (
        smtplib.SMTP("127.0.0.1", port) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail("mallory@elsewhere.example", ["bob@remote.example"], message())
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 554 and b"Access denied" in text
    with smtplib.SMTP("127.0.0.1", port) as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(POSTFIX_REINJECT_LOGIN, "a-guessed-secret-of-some-length")
    assert not [m for m in rig.sink.messages if m.mail_from == "mallory@elsewhere.example"]
