"""sendwarden in front of a real Exim 4.96 (Debian's, private, in its own namespace),
through the SMTP policy proxy (``sendwarden proxy``) wired with deploy/exim's pieces.

Exim accepts the message, routes outbound mail to the proxy (logged in with the shared
secret, the sender's identity in a forced AUTH= parameter), and the proxy relays what
passes back to Exim's return port, from where it reaches the sink. A refusal at MAIL or
RCPT is the proxy's reply to Exim: a 5xx becomes Exim's bounce to the sender with the
rule's text, a 4xx leaves the recipient queued in Exim. Exim itself refuses nothing
here, so what is refused is sendwarden's doing.
"""

from __future__ import annotations

import base64
import os
import signal
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
from tests.support.exim import PrivateExim
from tests.support.rig import PROXY_SECRET, Rig
from tests.support.service import wait_until
from tests.support.sink import Delivered

EXIM_RIG = {"mta": "exim", "accounts": ACCOUNTS, "sasl_users": USERS}


shared_rig, rig = module_rig(**EXIM_RIG)


def bounce_to(rig: Rig, sender: str, timeout: float = 30.0) -> Delivered:
    """Exim's bounce to ``sender`` (null reverse path), once it reached the sink."""

    def found() -> Delivered | None:
        for delivered in rig.sink.messages:
            if delivered.mail_from == "" and sender in delivered.rcpt_tos:
                return delivered
        return None

    return wait_until(found, timeout, lambda: f"no bounce to {sender}: {rig.sink.messages}")


def token(login: str, password: str) -> str:
    """The X-SENDWARDEN initial response (PLAIN's layout)."""
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def exim_of(rig: Rig) -> PrivateExim:
    assert isinstance(rig.mta, PrivateExim)
    return rig.mta


def test_sasl_login_is_attributed_and_relayed_without_identity_traces(rig: Rig) -> None:
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    assert b"sendwarden1" not in delivered.data  # the identity travelled in AUTH=, not here
    record = wait_for_decision(sendwarden_log(rig), stage="eom", login=ALICE)
    assert (record["account"], record["account_source"]) == ("acme", "login")


def test_a_customers_own_auth_parameter_is_not_believed(rig: Rig) -> None:
    # Alice writes AUTH=<ceo@globex.example> on MAIL: Exim's forced value replaces it.
    with rig.smtp(ALICE) as client:
        client.mail(ALICE, ["AUTH=ceo@globex.example"])
        client.rcpt("carl@remote.example")
        assert client.data(message())[0] == 250
    rig.sink.wait_for(1, timeout=30)
    record = wait_for_decision(sendwarden_log(rig), stage="eom", login=ALICE, recipients=1)
    assert record["account"] == "acme"


RELAY_DENIED = b"5.7.1 Relaying denied: bob@remote.example is not a domain hosted"


def test_unauthenticated_relay_gets_554_at_rcpt(rig: Rig) -> None:
    # The first non-local recipient is cut through: the proxy's RCPT reply is the client's.
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], message())
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 554
    assert text.startswith(RELAY_DENIED)
    # It was the cutthrough's RCPT to the proxy (a 5xx during the cutthrough keeps its
    # text), not the policy socket, that the cut-through recipient asked.
    assert (
        "SMTP error from remote mail server after RCPT TO:<bob@remote.example>: 554 5.7.1 "
        "Relaying denied" in exim_of(rig).log()
    )
    # After a local recipient nothing is cut through: Exim's RCPT ACL asks the proxy's
    # policy socket while the client waits, and its reply is the same.
    with rig.smtp() as client:
        client.mail("someone@elsewhere.example")
        assert client.rcpt("postmaster@hosting.example")[0] == 250
        code, text = client.rcpt("bob@remote.example")
        client.rset()
    assert code == 554
    assert text.startswith(RELAY_DENIED)
    received = [line for line in exim_of(rig).log().splitlines() if " <= " in line]
    assert not [line for line in received if "someone@elsewhere.example" in line]  # not queued


def test_suspended_account_gets_550_at_rcpt(rig: Rig) -> None:
    assert rig.config_path is not None
    suspend = [sys.executable, "-m", "sendwarden", "account", "suspend", "initech",
               "--reason", "spam complaints", "-c", str(rig.config_path)]  # fmt: skip
    assert subprocess.run(suspend, capture_output=True, check=False).returncode == 0
    with rig.smtp(CAROL) as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail(CAROL, ["bob@remote.example"], message(CAROL))
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 550 and text.startswith(b"5.7.1 Account initech is suspended by the provider")
    assert b"spam complaints" not in text  # staff reasons stay internal


def test_without_the_policy_socket_a_refusal_is_a_bounce_with_the_same_text(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(**EXIM_RIG, config_extra={"proxy": {"policy_listen": ""}})
    # A cut-through recipient does not need the policy socket: the proxy refuses it.
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], message())
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 554 and text.startswith(RELAY_DENIED)
    # One that is not (after a local recipient) gets no answer from the socket: Exim
    # accepts it, the proxy refuses it at delivery, and the sender gets a bounce.
    with rig.smtp() as client:
        refusals = client.sendmail(
            "someone@elsewhere.example", ["postmaster@hosting.example", "bob@remote.example"],
            message(),
        )  # fmt: skip
        assert refusals == {}
    bounce = bounce_to(rig, "someone@elsewhere.example")
    assert b"554 5.7.1 Relaying denied: bob@remote.example is not a domain hosted here" in (
        bounce.data.replace(b"\r\n ", b" ")
    )


def test_rate_limit_defers_the_recipient_over_the_limit_in_exims_queue(rig: Rig) -> None:
    recipients = [f"r{number}@remote.example" for number in range(4)]
    with rig.smtp(BOB) as client:
        assert client.sendmail(BOB, recipients, message(BOB)) == {}
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert sorted(delivered.rcpt_tos) == recipients[:3]
    mta = exim_of(rig)
    wait_until(lambda: "451 4.7.1 Account globex has reached its limit" in mta.log(), 20, mta.log)
    assert mta.queue_count() >= 1  # kept in Exim's queue: nothing lost


def refused_at_data(rig: Rig, login: str, recipients: list[str], data: bytes) -> tuple[int, bytes]:
    """The client's reply to DATA (Exim cut the message through to the proxy while the
    client was connected: the proxy's verdict is that reply), and nothing of it was
    queued, delivered or bounced."""
    queued = exim_of(rig).queue_count()  # the shared rig's queue may hold others' mail
    with rig.smtp(login) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(login, recipients, data)
    assert exim_of(rig).queue_count() == queued
    assert rig.sink.messages == []
    return refused.value.smtp_code, b" ".join(refused.value.smtp_error.split())


def test_forged_from_is_refused_at_data_with_550(rig: Rig) -> None:
    code, text = refused_at_data(rig, ALICE, ["bob@remote.example"], message("ceo@globex.example"))
    assert code == 550 and text.startswith(b"5.7.1 Forged sender refused")
    record = wait_for_decision(sendwarden_log(rig), stage="eom", login=ALICE, rule="forged-sender")
    assert record["verdict"] == "reject"


def test_forged_from_of_a_local_submission_bounces_with_the_same_text(rig: Rig) -> None:
    submitted = exim_of(rig).sendmail(message("ceo@globex.example"), ALICE, ["bob@remote.example"])
    assert submitted.returncode == 0, submitted.stderr  # accepted; judged at delivery
    bounce = bounce_to(rig, ALICE)
    assert b"550 5.7.1 Forged sender refused" in bounce.data.replace(b"\r\n ", b" ")


def test_file_over_the_cap_is_refused_at_data_with_552(rig: Rig) -> None:
    code, text = refused_at_data(rig, ALICE, ["bob@remote.example"], with_file(21 * MIB))
    assert code == 552 and text.startswith(b"5.3.4")


def test_bulk_without_consent_is_refused_at_data_with_550(rig: Rig) -> None:
    readers = [f"reader{number}@bulk.example" for number in range(60)]
    body = message(ALICE, subject="news", List_Unsubscribe="<mailto:leave@acme.example>")
    code, text = refused_at_data(rig, ALICE, readers, body)
    assert code == 550 and text.startswith(b"5.7.1") and b"consent" in text


def test_mime_nested_too_deep_is_refused_at_data_with_554_5_6_0(rig: Rig) -> None:
    code, text = refused_at_data(rig, ALICE, ["bob@remote.example"], too_deep())
    assert code == 554 and text.startswith(b"5.6.0")


def test_unlisted_login_refused_at_rcpt_when_the_provider_refuses_them(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(**EXIM_RIG, policy={"unknown_senders": "refuse"})
    with rig.smtp(MALLORY) as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail(MALLORY, ["bob@remote.example"], message(MALLORY))
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 550 and text.startswith(b"5.7.1 Sender refused")


def test_local_submission_is_attributed_to_its_uid(rig: Rig) -> None:
    result = rig.sendmail(message(ALICE), ALICE, ["bob@remote.example"], uid=65534)
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(sendwarden_log(rig), stage="eom", uid=65534)
    assert (record["account"], record["account_source"]) == ("acme", "uid")


def test_a_local_user_no_account_lists_is_an_account_of_its_own(rig: Rig) -> None:
    result = rig.sendmail(message("web@own.example"), "web@own.example",
                          ["erin@remote.example"], uid=65533)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("erin@remote.example",)
    record = wait_for_decision(sendwarden_log(rig), stage="eom", uid=65533)
    assert (record["account"], record["account_source"]) == ("uid:65533", "uid")


def test_a_local_process_cannot_use_the_return_port(rig: Rig) -> None:
    port = exim_of(rig).return_port
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("sneaky.example")
        assert client.mail(ALICE)[0] == 550  # not logged in as the proxy
        assert client.docmd("AUTH", "X-SENDWARDEN " + token("sendwarden", "a guess"))[0] == 535
        assert client.mail(ALICE)[0] == 550
    assert rig.sink.messages == []


def test_a_local_process_cannot_speak_to_the_proxy_as_exim(rig: Rig) -> None:
    assert rig.config_path is not None
    assert rig.milter is not None and rig.milter.socket.port is not None
    port = rig.milter.socket.port
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("sneaky.example")
        assert client.mail(ALICE, ["AUTH=sendwarden1;esmtpa;YWxpY2U=;0;"])[0] == 530
        wrong = token("exim", PROXY_SECRET[:-1] + "x")
        assert client.docmd("AUTH", f"X-SENDWARDEN {wrong}")[0] == 535
        assert client.mail(ALICE, ["AUTH=sendwarden1;esmtpa;YWxpY2U=;0;"])[0] == 530


def test_dsn_parameters_pass_through_the_proxy(rig: Rig) -> None:
    # NOTIFY=SUCCESS reaches the Exim instance behind the proxy, which reports the
    # delivery to the (non-DSN) sink as "relayed" with our ENVID.
    with rig.smtp(ALICE) as client:
        client.sendmail(
            ALICE,
            ["dsn@remote.example"],
            message(),
            mail_options=["RET=HDRS", "ENVID=sw-envid-42"],
            rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;dsn@remote.example"],
        )
    report = bounce_to(rig, ALICE)
    assert b"sw-envid-42" in report.data
    assert b"relayed" in report.data.lower()


def test_a_dsn_recipient_after_the_cutthrough_began_is_asked_to_come_again(rig: Rig) -> None:
    """The cutthrough RCPT cannot carry NOTIFY: such a recipient gets 452 (a transaction
    of its own), never a silent loss of its DSN request; the others are delivered."""
    with rig.smtp(ALICE) as client:
        assert client.ehlo_or_helo_if_needed() is None
        assert client.mail(ALICE)[0] == 250
        assert client.rcpt("first@remote.example")[0] == 250
        code, text = client.rcpt("second@remote.example", ["NOTIFY=SUCCESS"])
        assert code == 452 and text.startswith(b"4.5.3 Delivery status notifications")
        assert client.data(message())[0] == 250
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("first@remote.example",)


def test_stopped_proxy_leaves_mail_queued_then_delivers(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(**EXIM_RIG)
    assert rig.milter is not None and rig.redis is not None
    mta = exim_of(rig)
    rig.milter.stop()
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    wait_until(lambda: mta.queue_count() == 1, 20, "not queued")
    rig.redis.stop()  # the store down: 451 4.3.0 from the proxy, still queued
    rig.milter.start()
    mta.run_queue()
    wait_until(lambda: "451 4.3.0" in mta.log(), 20, mta.log)
    assert mta.queue_count() == 1
    assert rig.sink.messages == []
    rig.redis.start()
    mta.run_queue()
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("bob@remote.example",)


def test_sighup_reloads_the_proxy_and_a_bad_file_keeps_the_running_rules(
    make_rig: Callable[..., Rig],
) -> None:
    """The proxy reloads as the milter does: new rules for the proxy's own judgement
    (attachment cap, at delivery) and for its policy socket (unlisted logins, at RCPT);
    a file that does not load is refused with a log line and the running rules stay."""
    rig = make_rig(**EXIM_RIG, policy={"unknown_senders": "limit", "max_attachment_bytes": MIB})
    assert rig.milter is not None and rig.config_path is not None and rig.milter.pid
    with rig.smtp(MALLORY) as client:  # unlisted logins counted and limited: delivered
        assert client.sendmail(MALLORY, ["bob@remote.example"], message(MALLORY)) == {}
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], with_file(MIB // 2)) == {}
    rig.sink.wait_for(2, timeout=30)
    config = rig.config_path.read_text()
    stricter = config.replace('unknown_senders = "limit"', 'unknown_senders = "refuse"')
    stricter = stricter.replace(
        f"max_attachment_bytes = {MIB}", f"max_attachment_bytes = {MIB // 4}"
    )
    assert stricter.count("refuse") == 1 and f"= {MIB // 4}" in stricter
    rig.config_path.write_text(stricter)
    os.kill(rig.milter.pid, signal.SIGHUP)
    rig.milter.wait_for_log("configuration reloaded")

    def shows_the_new_rules() -> None:
        with rig.smtp(MALLORY) as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(MALLORY, ["bob@remote.example"], message(MALLORY))
        code, text = refused.value.recipients["bob@remote.example"]
        assert code == 550 and text.startswith(b"5.7.1 Sender refused")
        rig.sink.clear()
        code, _ = refused_at_data(rig, ALICE, ["bob@remote.example"], with_file(MIB // 2))
        assert code == 552

    shows_the_new_rules()
    rig.config_path.write_text(stricter + "\n[policy\n")  # broken TOML
    os.kill(rig.milter.pid, signal.SIGHUP)
    rig.milter.wait_for_log("reload refused, keeping the running configuration")
    assert rig.milter.pid  # still running
    shows_the_new_rules()
    with rig.smtp(ALICE) as client:  # and passing mail still passes
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    wait_until(lambda: [m for m in rig.sink.messages if m.mail_from == ALICE], 30, "not delivered")


def test_the_benchmarks_no_op_proxy_takes_the_same_path(make_rig: Callable[..., Rig]) -> None:
    """loadtest.proxy's baseline row measures Exim's own work on the proxy path: the
    no-op proxy (loadtest/noop_proxy.py) gets Exim's cutthrough and hands the message
    back through the return port, logged in, exactly as sendwarden's proxy does."""
    rig = make_rig(mta="exim", milter="noop-proxy", sasl_users=USERS)
    mta = exim_of(rig)
    with rig.smtp(ALICE) as client:
        assert client.sendmail(ALICE, ["bob@remote.example"], message()) == {}
    (delivered,) = rig.sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    lines = mta.log().splitlines()
    cut_through = [line for line in lines if " >> bob@remote.example " in line]
    assert len(cut_through) == 1, lines
    assert " R=sendwarden_proxy T=sendwarden_proxy " in cut_through[0]
    assert f"[127.0.0.1]:{mta.proxy_port} " in cut_through[0]
    returned = [line for line in lines if " <= " in line and "H=(noop-proxy)" in line]
    assert len(returned) == 1, lines
    assert " P=esmtpa A=sendwarden_auth:sendwarden " in returned[0]
    assert len(rig.sink.messages) == 1
