"""The recipient rate limit through a real Postfix: SMTP clients see 451 4.7.1 for the
recipient that crosses the limit, sendmail(1) mail waits whole, quota comes back
after an aborted transaction, and a Redis outage is a 451 4.3.0 that heals itself."""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Callable

import pytest

from tests.support.rig import Rig
from tests.support.sendwarden_config import DEFAULT_ACCOUNT
from tests.support.service import wait_until

MESSAGE = b"From: Alice <alice@acme.example>\r\nSubject: rate limit test\r\n\r\nHello.\r\n"
GLOBEX = {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"]}
USERS = {"alice@acme.example": "alice-secret", "bob@globex.example": "bob-secret"}
GLOBEX_MESSAGE = MESSAGE.replace(b"alice@acme.example", b"bob@globex.example")
#: Not bulk mail however many recipients: the consent rules are not under test here.
NOT_BULK = {"bulk_recipient_threshold": 100_000, "bulk_distinct_recipients_per_hour": 100_000}


def recipients(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{number}@remote.example" for number in range(count)]


def delivered_recipients(rig: Rig, expected: int, timeout: float = 30.0) -> list[str]:
    """All recipients the sink got (Postfix splits big messages into batches), once
    ``expected`` of them arrived."""

    def delivered() -> list[str]:
        return [rcpt for message in rig.sink.messages for rcpt in message.rcpt_tos]

    with contextlib.suppress(TimeoutError):  # the caller's assertion tells what arrived
        wait_until(lambda: len(delivered()) >= expected, timeout, "too few recipients")
    return delivered()


def small_limit_rig(make_rig: Callable[..., Rig], **kwargs: object) -> Rig:
    return make_rig(
        accounts=[DEFAULT_ACCOUNT, GLOBEX],
        sasl_users=USERS,
        policy={"recipients_per_hour": 5},
        consent=NOT_BULK,
        **kwargs,
    )


def test_500_recipients_pass_and_the_501st_is_deferred(make_rig: Callable[..., Rig]) -> None:
    """The real limit once: one message to 501 recipients, then one more message."""
    rig = make_rig(consent=NOT_BULK)  # recipients_per_hour = 500
    with rig.smtp("alice@acme.example") as client:
        refused = client.sendmail("alice@acme.example", recipients("r", 501), MESSAGE)
    assert list(refused) == ["r500@remote.example"]
    code, text = refused["r500@remote.example"]
    assert code == 451
    assert text.startswith(
        b"4.7.1 Account acme has reached its limit of 500 recipients per hour; "
        b"capacity frees up at "
    )
    assert len(delivered_recipients(rig, 500)) == 500

    with (  # across messages too
        rig.smtp("alice@acme.example") as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as caught,
    ):
        client.sendmail("alice@acme.example", ["late@remote.example"], MESSAGE)
    assert caught.value.recipients["late@remote.example"][0] == 451


def test_limit_across_messages_leaves_other_accounts_alone(make_rig: Callable[..., Rig]) -> None:
    rig = small_limit_rig(make_rig)
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", recipients("a", 3), MESSAGE) == {}
        refused = client.sendmail("alice@acme.example", recipients("b", 3), MESSAGE)
    assert list(refused) == ["b2@remote.example"]
    assert refused["b2@remote.example"][1].startswith(b"4.7.1 Account acme has reached its limit")
    # The RCPT refusal can be found by queue id (Postfix named the message after the
    # first accepted recipient) and by session, like the rest of its transaction.
    wait_until(lambda: len(rig.decisions()) >= 3, 10, "too few decision lines")
    lines = rig.decisions()
    assert all(line["session"] for line in lines), lines
    rcpt = next(line for line in lines if line.get("recipient") == "b2@remote.example")
    eom = next(line for line in lines if line["stage"] == "eom" and line["recipients"] == 2)
    assert rcpt["queue_id"] and rcpt["queue_id"] == eom["queue_id"], lines
    assert rcpt["session"] == eom["session"]
    assert "recipient-rate" not in rcpt["passed"]
    with rig.smtp("bob@globex.example") as client:
        assert client.sendmail("bob@globex.example", recipients("c", 5), GLOBEX_MESSAGE) == {}
    assert len(delivered_recipients(rig, 10)) == 10


def test_aborted_transaction_gives_its_quota_back(make_rig: Callable[..., Rig]) -> None:
    rig = small_limit_rig(make_rig)
    with rig.smtp("alice@acme.example") as client:
        client.mail("alice@acme.example")
        for rcpt in recipients("gone", 4):
            assert client.rcpt(rcpt)[0] == 250
        client.rset()  # the milter is told to abort: the four are given back
        assert client.sendmail("alice@acme.example", recipients("a", 5), MESSAGE) == {}
    assert len(delivered_recipients(rig, 5)) == 5
    aborted = [line for line in rig.decisions() if line["stage"] == "abort"]
    assert [(line["verdict"], line["recipients"]) for line in aborted] == [("aborted", 4)]


def test_sendmail_submission_waits_whole_when_it_does_not_fit(
    make_rig: Callable[..., Rig],
) -> None:
    rig = small_limit_rig(make_rig)
    first = rig.sendmail(MESSAGE, "web@acme.example", recipients("a", 3))
    assert first.returncode == 0, first.stderr
    assert len(delivered_recipients(rig, 3)) == 3
    second = rig.sendmail(MESSAGE, "web@acme.example", recipients("b", 3))
    assert second.returncode == 0, second.stderr
    rig.postfix.wait_for_log("4.7.1 Account acme has reached its limit of 5 recipients")
    assert rig.postfix.queue_files(["maildrop"])  # kept, retried later: nothing lost
    assert len(delivered_recipients(rig, 3, timeout=0.5)) == 3  # none of the second


def test_redis_outage_tempfails_and_recovers(make_rig: Callable[..., Rig]) -> None:
    rig = small_limit_rig(make_rig)
    assert rig.redis is not None and rig.milter is not None
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", recipients("a", 1), MESSAGE) == {}
    rig.redis.stop()
    try:
        for attempt in range(3):
            with (
                rig.smtp("alice@acme.example") as client,
                pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as caught,
            ):
                client.sendmail("alice@acme.example", [f"down{attempt}@remote.example"], MESSAGE)
            assert "451" in str(caught.value) and "4.3.0" in str(caught.value)
    finally:
        rig.redis.start()  # same port, empty: the milter reconnects by itself
    with rig.smtp("alice@acme.example") as client:
        assert client.sendmail("alice@acme.example", recipients("b", 5), MESSAGE) == {}
    assert len(delivered_recipients(rig, 6)) == 6
    log = rig.milter.log()
    outage_lines = [line for line in log.splitlines() if "ERROR" in line and "unavailable" in line]
    assert len(outage_lines) == 1, log  # once per outage, not once per message
    assert "redis is available again" in log
