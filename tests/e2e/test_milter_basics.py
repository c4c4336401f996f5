"""The milter in front of a real Postfix: attribution, open relay, suspension, reload.

Every test here runs sendwarden's own milter (``python -m sendwarden milter``) behind a
private Postfix with real Cyrus SASL logins, relaying to an aiosmtpd sink.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.rig import Rig

MESSAGE = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: Bob <bob@remote.example>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


def decisions(rig: Rig) -> list[dict[str, Any]]:
    """The milter's JSON decision lines."""
    assert rig.milter is not None
    return rig.decisions()


def wait_for_decision(rig: Rig, **wanted: Any) -> dict[str, Any]:
    assert rig.milter is not None
    rig.milter.wait_for_log('"event": "decision"')
    for _ in range(200):
        for record in decisions(rig):
            if all(record.get(key) == value for key, value in wanted.items()):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no decision with {wanted}: {decisions(rig)}")


def sendwarden_cli(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    assert rig.config_path is not None
    return subprocess.run(
        [sys.executable, "-m", "sendwarden", *args, "-c", str(rig.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_authenticated_relay_is_delivered(rig: Rig) -> None:
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE) == {}
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(rig, stage="eom")
    assert record["account"] == "acme"
    assert record["account_source"] == "login"
    assert record["login"] == "alice@acme.example"
    assert record["verdict"] == "continue"
    assert record["queue_id"]  # Postfix's queue id, for grepping the mail log


def test_unauthenticated_relay_is_refused_with_554(rig: Rig) -> None:
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE)
    code, text = refused.value.recipients["bob@remote.example"]
    assert code == 554
    assert text.startswith(b"5.7.1 Relaying denied: bob@remote.example is not a domain hosted here")
    record = wait_for_decision(rig, stage="rcpt")
    assert record["rule"] == "relay"
    assert record["client_address"] == "127.0.0.1"


def test_unauthenticated_mail_to_a_local_domain_is_accepted(rig: Rig) -> None:
    with rig.smtp() as client:
        refused = client.sendmail(
            "someone@elsewhere.example",
            ["info@hosting.example", "bob@remote.example"],
            MESSAGE,
        )
    assert refused == {"bob@remote.example": (554, refused["bob@remote.example"][1])}
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("info@hosting.example",)


def test_sendmail_submission_is_attributed_by_uid(make_rig: Callable[..., Rig]) -> None:
    # account_source tells the path: "uid" (pickup's record in the queue file); the
    # envelope sender is a claim and never picks the account.
    rig = make_rig(accounts=[{"id": "acme", "uids": [65534], "domains": ["acme.example"]}])
    result = rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"])
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    record = wait_for_decision(rig, stage="eom")
    assert record["account"] == "acme"
    assert record["account_source"] == "uid"
    assert record["client"] == "local submission (sendmail)"
    assert record["verdict"] == "continue"


def test_suspended_account_is_refused_at_mail(rig: Rig) -> None:
    suspended = sendwarden_cli(rig, "account", "suspend", "acme", "--reason", "spam complaints")
    assert suspended.returncode == 0, suspended.stderr
    with (
        rig.smtp("alice@acme.example") as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Account acme is suspended since")
    assert b"spam complaints" in refused.value.smtp_error

    shown = sendwarden_cli(rig, "account", "show", "acme")
    assert "suspended since" in shown.stdout and "spam complaints" in shown.stdout
    assert sendwarden_cli(rig, "account", "unsuspend", "acme").returncode == 0
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE) == {}
    rig.sink.wait_for(1)


def test_suspended_account_via_sendmail_bounces(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    assert sendwarden_cli(rig, "account", "suspend", "acme").returncode == 0
    result = rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"], uid=65534)
    assert result.returncode == 0
    (bounce,) = rig.sink.wait_for(1)  # the refusal comes back to the sender as a bounce
    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == ("web@acme.example",)
    assert b"Account acme is suspended" in bounce.data


def reload_with_remote_example_local(rig: Rig, original: str) -> None:
    """Rewrite the config so remote.example is a local domain, and send SIGHUP."""
    assert rig.milter is not None and rig.config_path is not None and rig.milter.pid
    rig.config_path.write_text(
        original.replace(
            'local_domains = ["hosting.example"]',
            'local_domains = ["hosting.example", "remote.example"]',
        )
    )
    os.kill(rig.milter.pid, signal.SIGHUP)


def test_sighup_reloads_and_a_bad_config_is_refused(rig: Rig) -> None:
    assert rig.milter is not None and rig.config_path is not None and rig.milter.pid
    original = rig.config_path.read_text()
    # A broken config: refused, the running one stays.
    rig.config_path.write_text(original.replace("[policy]", "[policy]\nbogus_key = 1", 1))
    os.kill(rig.milter.pid, signal.SIGHUP)
    rig.milter.wait_for_log("reload refused")
    assert "policy.bogus_key: unknown key" in rig.milter.log()
    # A good one: remote.example becomes a local domain, so relaying to it is inbound mail.
    reload_with_remote_example_local(rig, original)
    rig.milter.wait_for_log("configuration reloaded")
    with rig.smtp() as client:
        assert client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE) == {}
    rig.sink.wait_for(1)


def test_a_session_open_across_a_reload_keeps_its_rules_then_frees_them(rig: Rig) -> None:
    assert rig.milter is not None and rig.config_path is not None and rig.milter.pid
    original = rig.config_path.read_text()
    with rig.smtp() as client:  # Postfix opened its milter connection at connect time
        reload_with_remote_example_local(rig, original)
        rig.milter.wait_for_log("(1 earlier ones still finish connections)")
        # This session still runs on the old rules: relaying to remote.example is refused.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE)
        assert "previous configuration closed" not in rig.milter.log()
    # Its end frees the old configuration; new sessions get the new rules.
    rig.milter.wait_for_log("previous configuration closed: its last connection ended")
    with rig.smtp() as client:
        assert client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE) == {}
    rig.sink.wait_for(1)


def test_sigterm_stops_cleanly(rig: Rig) -> None:
    assert rig.milter is not None
    assert rig.milter.stop() == 0
    assert "sendwarden milter stopped" in rig.milter.log()


def test_inet_socket_with_tcp_nodelay(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(milter_socket="inet", config_extra={"log": {"level": "debug"}})
    assert rig.milter is not None
    assert "TCP_NODELAY set on the milter listener" in rig.milter.log()
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE) == {}
    rig.sink.wait_for(1)
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE)
