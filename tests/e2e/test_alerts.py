"""Blacklist risk alerts end to end: a customer's mail refused by the milter in front
of a real Postfix is counted, and ``sendwarden alerts run`` tells the abuse desk by
mail, together with a DNSBL listing served by a loopback DNS server."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.support.dns_server import DnsServer
from tests.support.rig import Rig
from tests.support.sendwarden_config import DEFAULT_ACCOUNT
from tests.support.sink import SmtpSink

MESSAGE = b"From: Alice <alice@acme.example>\r\nSubject: campaign\r\n\r\nBuy now.\r\n"
SPOOFED = b"From: PayPal <service@paypal.example>\r\nSubject: verify\r\n\r\nClick.\r\n"
NOT_BULK = {"bulk_recipient_threshold": 100_000, "bulk_distinct_recipients_per_hour": 100_000}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def run_alerts(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return rig.command("alerts", *args)


def test_refusals_of_a_customer_reach_the_abuse_desk(
    make_rig: Callable[..., Rig], smtp_sink: SmtpSink, dns: DnsServer
) -> None:
    dns.publish_a("10.2.0.192.zen.spamhaus.org", "127.0.0.4")
    rig = make_rig(
        accounts=[DEFAULT_ACCOUNT],
        policy={"recipients_per_hour": 2},
        consent=NOT_BULK,
        config_extra={
            "alerts": {
                "monitored_networks": ["192.0.2.10/32"],
                "dnsbl_zones": ["zen.spamhaus.org"],
                "dns_servers": [dns.address],
                "risk_refusals_per_hour": 3,
                "near_limit_share": 0,  # the early warnings have tests of their own
                "mail_to": ["abuse@hosting.example"],
                "smtp_server": f"127.0.0.1:{smtp_sink.port}",
            }
        },
    )
    with rig.smtp("alice@acme.example") as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:  # 550 5.7.1 at end of message
            client.sendmail("alice@acme.example", ["x@remote.example"], SPOOFED)
        assert caught.value.smtp_code == 550  # and its recipient is given back
        recipients = [f"r{number}@remote.example" for number in range(4)]
        refused = client.sendmail("alice@acme.example", recipients, MESSAGE)
        assert sorted(refused) == ["r2@remote.example", "r3@remote.example"]  # 451 4.7.1

    risk = run_alerts(rig, "risk")
    assert risk.returncode == 0, risk.stderr
    assert "acme: 3 refusal(s) in the last hour AT RISK" in risk.stdout
    assert "recipient-rate 2" in risk.stdout

    sweep = run_alerts(rig, "run", "--once")
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    mails = {str(mail.message["Subject"]): mail for mail in smtp_sink.wait_for(2)}
    assert sorted(mails) == [
        "[sendwarden] 192.0.2.10 is listed on zen.spamhaus.org",
        "[sendwarden] Account acme was refused 3 times in the last hour",
    ]
    body = mails["[sendwarden] Account acme was refused 3 times in the last hour"].message
    text = body.get_content()
    assert "recipient-rate: 2 recipients over the hourly limit" in text
    assert "sendwarden account suspend acme" in text
    assert (
        "XBL"
        in mails["[sendwarden] 192.0.2.10 is listed on zen.spamhaus.org"].message.get_content()
    )

    again = run_alerts(rig, "run", "--once")  # nothing new: the desk is not told twice
    assert again.returncode == 0 and "0 alert(s) sent" in again.stdout
    assert len(smtp_sink.messages) == 2
