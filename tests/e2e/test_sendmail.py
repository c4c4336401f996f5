"""sendwarden in a real Sendmail 8.17 (Debian's, private, in its own namespace).

The MTA is configured with ``deploy/sendmail.mc``'s milter lines (INPUT_MAIL_FILTER with
F=T and timeouts, {client_addr} and the daemon macros at connect, {auth_authen} and
{auth_author} at MAIL) and the MSP (submit.cf) hands local mail to it over loopback
SMTP, as on any Sendmail host. Every reply of README's table is checked as a client sees
it; local submissions are attributed by the uid that owns the MSP's socket.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.scenarios import (
    ACCOUNTS,
    ALICE,
    BOB,
    CAROL,
    MALLORY,
    MIB,
    USERS,
    message,
    module_rig,
    sendwarden_log,
    too_deep,
    wait_for_decision,
    with_file,
)
from tests.support.rig import Rig
from tests.support.sendmail import MSP_UID

#: Sendmail refuses a milter socket under world-writable /tmp ("unsafe"): inet it is.
SENDMAIL_RIG = {"mta": "sendmail", "milter_socket": "inet", "accounts": ACCOUNTS,
                "sasl_users": USERS}  # fmt: skip


shared_rig, rig = module_rig(**SENDMAIL_RIG)


def test_sasl_login_is_attributed_and_relayed(rig: Rig) -> None:
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(sendwarden_log(rig), stage="eom", login=ALICE)
    assert (record["account"], record["account_source"]) == ("acme", "login")
    assert record["client_address"] == "127.0.0.1"  # from the connect macros
    assert record["queue_id"]  # Sendmail's queue id ({i})


def test_unauthenticated_relay_gets_554(rig: Rig) -> None:
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], message())
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 554 and text.startswith(b"5.7.1 ")
    assert b"Relaying denied: bob@remote.example is not a domain hosted here" in text


def test_suspended_account_gets_550_at_mail(rig: Rig) -> None:
    assert rig.config_path is not None
    suspend = [sys.executable, "-m", "sendwarden", "account", "suspend", "initech",
               "--reason", "spam complaints", "-c", str(rig.config_path)]  # fmt: skip
    assert subprocess.run(suspend, capture_output=True, check=False).returncode == 0
    with rig.smtp(CAROL) as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail(CAROL, ["bob@remote.example"], message(CAROL))
    assert refused.value.smtp_code == 550
    # Sendmail puts the address before a MAIL/RCPT reply's text: "5.7.1 <addr>... text".
    assert refused.value.smtp_error.startswith(b"5.7.1 <carol@initech.example>... Account ")
    assert b"Account initech is suspended by the provider" in refused.value.smtp_error
    assert b"spam complaints" not in refused.value.smtp_error  # staff reasons stay internal


def test_rate_limit_defers_the_recipient_over_the_limit_with_451(rig: Rig) -> None:
    recipients = [f"r{number}@remote.example" for number in range(4)]
    with rig.smtp(BOB) as client:
        refused = client.sendmail(BOB, recipients, message(BOB))
    assert list(refused) == ["r3@remote.example"]
    code, text = refused["r3@remote.example"]
    assert code == 451
    assert text.startswith(b"4.7.1 ")
    assert b"Account globex has reached its limit of 3 recipients per hour" in text
    assert sorted(rig.sink.wait_for(1)[0].rcpt_tos) == recipients[:3]


def test_forged_from_gets_550_at_end_of_message(rig: Rig) -> None:
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ALICE, ["bob@remote.example"], message("ceo@globex.example"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    assert b"globex.example" in refused.value.smtp_error


def test_file_over_the_cap_gets_552(rig: Rig) -> None:
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ALICE, ["bob@remote.example"], with_file(21 * MIB))
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.startswith(b"5.3.4 ")


def test_bulk_without_consent_gets_550(rig: Rig) -> None:
    readers = [f"reader{number}@bulk.example" for number in range(60)]
    body = message(ALICE, subject="news", List_Unsubscribe="<mailto:leave@acme.example>")
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ALICE, readers, body)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    assert b"consent" in refused.value.smtp_error


def test_mime_nested_too_deep_gets_554_5_6_0(rig: Rig) -> None:
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(ALICE, ["bob@remote.example"], too_deep())
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.6.0 ")


def test_local_submission_is_attributed_to_the_uid_of_the_msp(rig: Rig) -> None:
    # {auth_author} says "nobody@..." (any local process may write that AUTH= value); the
    # account comes from the uid the kernel recorded for the MSP's socket (acme's 65534).
    result = rig.sendmail(message(ALICE), ALICE, ["bob@remote.example"], uid=65534)
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(sendwarden_log(rig), stage="eom", uid=65534)
    assert (record["account"], record["account_source"]) == ("acme", "uid")
    assert record["login"] is None


def test_local_submission_by_root_is_the_msp_user_not_a_claim(rig: Rig) -> None:
    # Root's MSP drops to its RunAsUser: that uid is what is proven, whatever -f says.
    rig.sendmail(message(ALICE), ALICE, ["carl@remote.example"], uid=0)
    record = wait_for_decision(sendwarden_log(rig), uid=MSP_UID, stage="eom")
    # An account of its own (no account lists 65533), which may not use acme's domain.
    assert (record["account"], record["account_source"]) == (f"uid:{MSP_UID}", "uid")
    assert record["rule"] == "impersonation"


def test_local_submission_refused_fails_the_msp(rig: Rig) -> None:
    result = rig.sendmail(message("ceo@globex.example"), ALICE, ["dan@remote.example"], uid=65534)
    assert result.returncode == 69  # EX_UNAVAILABLE: the MTA refused it; nothing relayed
    record = wait_for_decision(sendwarden_log(rig), stage="eom", uid=65534, verdict="reject")
    assert record["reply"].startswith("550 5.7.1 ") and "globex.example" in record["reply"]
    assert not [m for m in rig.sink.messages if "dan@remote.example" in m.rcpt_tos]


def test_unlisted_login_refused_store_down_and_milter_down(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(**SENDMAIL_RIG, policy={"unknown_senders": "refuse"})
    assert rig.redis is not None and rig.milter is not None
    with rig.smtp(MALLORY) as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail(MALLORY, ["bob@remote.example"], message(MALLORY))
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1 ")
    assert b"Sender refused" in refused.value.smtp_error
    rig.redis.stop()
    with rig.smtp(ALICE) as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail(ALICE, ["bob@remote.example"], message())
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (451, b"4.3.0")
    rig.milter.stop()  # F=T: Sendmail tempfails rather than pass mail unchecked
    with rig.smtp() as client:
        assert client.mail(ALICE)[0] == 451
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused_auth:
        rig.smtp(ALICE)
    assert refused_auth.value.smtp_code == 454  # even AUTH waits for the milter to be back
    assert rig.sink.messages == []
