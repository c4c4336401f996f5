"""The end-to-end harness itself, proven with a recording no-op milter (not sendwarden's).

Besides "mail gets through", these pin down the Postfix behaviour sendwarden's milter is
designed around (what a milter sees on each path, what Postfix does with its replies),
so a Postfix upgrade that changes it shows up here first.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.noop_milter import Verdict
from tests.support.postfix import pid_alive, session_members
from tests.support.redis_server import RedisServer
from tests.support.rig import Rig, start_rig
from tests.support.service import wait_until

MESSAGE = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: bob@remote.example\r\n"
    b"Subject: harness check\r\n"
    b"\r\n"
    b"Hello from the harness.\r\n"
)


def events_of(rig: Rig, cb: str) -> list[dict[str, Any]]:
    return [e for e in rig.events() if e["cb"] == cb]


def wait_for_event(rig: Rig, cb: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Events of one callback kind, once at least one arrived (the milter writes async)."""
    return wait_until(
        lambda: events_of(rig, cb),
        timeout,
        lambda: f"no {cb!r} event within {timeout}s: {rig.events()}",
        interval=0.02,
    )


def test_authenticated_smtp_submission_relays_to_a_remote_domain(noop_rig: Rig) -> None:
    with noop_rig.smtp("alice@acme.example") as client:
        refused = client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE)
    assert refused == {}

    (delivered,) = noop_rig.sink.wait_for(1)
    assert delivered.mail_from == "alice@acme.example"
    assert delivered.rcpt_tos == ("bob@remote.example",)
    assert delivered.message["Subject"] == "harness check"
    assert b"with ESMTPA" in delivered.data  # Postfix saw a real SASL login

    (mail,) = wait_for_event(noop_rig, "mail")
    assert mail["macros"]["{auth_authen}"] == "alice@acme.example"
    assert mail["macros"]["{auth_type}"] == "PLAIN"
    connect = next(e for e in events_of(noop_rig, "connect") if e["conn"] == mail["conn"])
    assert connect["args"]["hostaddr"][0] == "127.0.0.1"
    assert connect["args"]["hostaddr"][1] > 0


def test_sendmail_submission_as_a_non_root_uid_arrives(noop_rig: Rig) -> None:
    result = noop_rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"], uid=65534)
    assert result.returncode == 0, result.stderr

    (delivered,) = noop_rig.sink.wait_for(1)
    assert delivered.mail_from == "web@acme.example"
    assert delivered.rcpt_tos == ("bob@remote.example",)
    # pickup records the submitting uid; the milter never sees this header (see below).
    assert delivered.message["Received"].startswith(
        "by mta.sendwarden.test (Postfix, from userid 65534)"
    )

    (mail,) = wait_for_event(noop_rig, "mail")
    connect = next(e for e in events_of(noop_rig, "connect") if e["conn"] == mail["conn"])
    assert connect["args"]["hostname"] == "localhost"
    assert connect["args"]["hostaddr"] == ["127.0.0.1", 0]  # port 0: not a TCP client
    assert mail["args"]["mail_from"] == "web@acme.example"  # no angle brackets here
    assert "{auth_authen}" not in mail["macros"]
    assert mail["macros"]["i"]  # the queue id is known from MAIL on, unlike smtpd
    wait_for_event(noop_rig, "eom")
    assert not [h for h in events_of(noop_rig, "header") if h["args"]["name"] == "Received"]


def test_postfix_itself_relays_anything_so_replies_come_from_the_milter(noop_rig: Rig) -> None:
    with noop_rig.smtp() as client:  # no AUTH, foreign sender, remote recipient
        client.sendmail("someone@else.example", ["bob@remote.example"], MESSAGE)
    (delivered,) = noop_rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)


def test_milter_replies_reach_the_smtp_client(make_rig: Callable[..., Rig]) -> None:
    verdict = Verdict.parse("rcpt@blocked=reject:554:5.7.1:relay denied by test milter")
    rig = make_rig(milter="noop", verdicts=[verdict])
    with rig.smtp() as client:
        refused = client.sendmail(
            "someone@else.example", ["ok@remote.example", "blocked@remote.example"], MESSAGE
        )
    assert refused == {"blocked@remote.example": (554, b"5.7.1 relay denied by test milter")}
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("ok@remote.example",)


def test_non_smtpd_reject_at_end_of_message_bounces_to_the_sender(
    make_rig: Callable[..., Rig],
) -> None:
    """sendmail(1) exits 0 regardless; a 5xx at EOM becomes a bounce with our text."""
    verdict = Verdict.parse("eom=reject:550:5.7.1:rejected by test milter")
    rig = make_rig(milter="noop", verdicts=[verdict])
    result = rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"], uid=65534)
    assert result.returncode == 0

    (bounce,) = rig.sink.wait_for(1)
    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == ("web@acme.example",)
    assert b"<bob@remote.example>: rejected by test milter" in bounce.data


def test_non_smtpd_cannot_reject_single_recipients(make_rig: Callable[..., Rig]) -> None:
    """A RCPT-stage reject on the sendmail(1) path is a Postfix configuration error: the
    message stays in the maildrop and is retried, so such rules must wait for EOM."""
    verdict = Verdict.parse("rcpt=reject:550:5.7.1:no")
    rig = make_rig(milter="noop", verdicts=[verdict])
    assert rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"]).returncode == 0
    rig.postfix.wait_for_log("can't reject recipient in non-smtpd(8) submission")
    assert rig.postfix.queue_files(["maildrop"])
    assert rig.sink.messages == []


def test_large_message_passes_postfix_and_the_sink(noop_rig: Rig) -> None:
    """Attachment tests send more than the 20 MiB cap; nothing in the rig may refuse it."""
    line = b"A" * 76 + b"\r\n"
    body = line * (22 * 1024 * 1024 // len(line))
    with noop_rig.smtp("alice@acme.example") as client:
        client.sendmail("alice@acme.example", ["bob@remote.example"], MESSAGE + body)
    (delivered,) = noop_rig.sink.wait_for(1, timeout=60)
    assert len(delivered.data) > len(body)


def test_everything_stops_and_nothing_is_left_running() -> None:
    with contextlib.ExitStack() as stack:
        rig = start_rig(stack, milter="noop", with_redis=True)
        master = rig.postfix._master_pid
        milter = rig.milter.pid if rig.milter else None
        assert rig.redis is not None
        redis_port = rig.redis.port
        assert master is not None and milter is not None
        assert session_members(master)  # smtpd, qmgr, pickup... are running
    assert session_members(master) == []
    assert not pid_alive(master)  # a zombie until init reaps it, at most
    with pytest.raises(ProcessLookupError):
        os.kill(milter, 0)
    assert not rig.dir.exists()
    assert not rig.postfix.root.exists()
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", rig.postfix.smtp_port, timeout=2)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", rig.sink.port, timeout=2)
    assert rig.redis.command("PING") is None and rig.redis.port == redis_port


def test_redis_can_be_stopped_and_restarted_on_the_same_port(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    assert not redis_server.ping()
    redis_server.start()
    assert redis_server.ping() and redis_server.url == url
