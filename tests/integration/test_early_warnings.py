"""Early warnings on real servers: the milter's volume recorder writes to a real
Redis, the rate limiter counts the hour, a loopback DNS server plays the DNSBL, and
the sweep's alerts arrive at an SMTP sink playing the abuse desk's mailbox."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sendwarden.alerts.early import VolumeRecorder, VolumeStore
from sendwarden.alerts.service import AlertService
from sendwarden.config import Account, Settings, settings_from_mapping
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import CONTINUE, reject
from sendwarden.ratelimit import counter_from_settings
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServer
from tests.support.sink import SmtpSink

ZEN = "zen.spamhaus.org"
ADDRESS = "192.0.2.10"
CLIENT = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="c.example", port=1)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def make_settings(redis_server: RedisServer, dns: DnsServer, sink: SmtpSink) -> Settings:
    return settings_from_mapping(
        {
            "redis": {"url": redis_server.url},
            "alerts": {
                "monitored_networks": [f"{ADDRESS}/32"],
                "dnsbl_zones": [ZEN],
                "dns_servers": [dns.address],
                "dns_timeout_ms": 500,
                "risk_refusals_per_hour": 0,
                "near_limit_share": 0.8,
                "surge_factor": 5,
                "surge_min_recipients": 20,
                "mail_to": ["abuse@hosting.example"],
                "smtp_server": f"127.0.0.1:{sink.port}",
                "sending_address": ADDRESS,
            },
            "accounts": [
                {"id": "acme", "recipients_per_hour": 10},
                {"id": "beta", "recipients_per_hour": 1000},
                {"id": "gamma"},
            ],
        }
    )


def sent(recorder: VolumeRecorder, account: str, recipients: int, refused: bool = False) -> None:
    """What the milter's pipeline tells the recorder at end of an accepted message."""
    txn = Transaction(
        client=CLIENT, login=f"user@{account}.example", account=Account(id=account),
        account_source="login", recipients=[f"r{n}@remote.example" for n in range(recipients)],
    )  # fmt: skip
    verdict = reject("forged-sender", "550", "5.7.1", "no") if refused else CONTINUE
    recorder.observe(txn, "eom", verdict)


def test_near_limit_surge_and_listing_with_top_senders_reach_the_desk(
    redis_server: RedisServer, dns: DnsServer, smtp_sink: SmtpSink, client: redis.Redis
) -> None:
    settings = make_settings(redis_server, dns, smtp_sink)
    now = time.time()
    # Beta's usual week: 10 recipients in each of five earlier hours.
    history = VolumeStore(client, "sw")
    for hours_ago in range(1, 6):
        minute = int(now - hours_ago * 3600) // 60
        history.add("203.0.113.1", {(minute, "beta"): 10})  # another host

    # This hour, as the milters saw it: the rate limiter's count and the recorder's.
    counter = counter_from_settings(settings, client)
    on_this_host = VolumeRecorder(VolumeStore(client, "sw"), ADDRESS, interval=60)
    elsewhere = VolumeRecorder(VolumeStore(client, "sw"), "", interval=60)  # address unset
    for account, recipients in (("acme", 8), ("beta", 60)):
        assert counter.reserve(account, recipients, 1000).admitted
        sent(on_this_host, account, recipients)
    sent(on_this_host, "acme", 50, refused=True)  # refused mail is no volume
    sent(elsewhere, "gamma", 3)
    on_this_host.close()
    elsewhere.close()
    dns.publish_a(f"10.2.0.192.{ZEN}", "127.0.0.2")

    report = AlertService(settings, client).sweep()
    assert not report.failed and not report.problems, report
    mails = {str(mail.message["Subject"]): mail.message for mail in smtp_sink.wait_for(3)}
    assert sorted(mails) == [
        f"[sendwarden] {ADDRESS} is listed on {ZEN}",
        "[sendwarden] Account acme has used 80% of its hourly limit",
        "[sendwarden] Account beta is sending 6 times its usual hourly volume",
    ]
    listing = mails[f"[sendwarden] {ADDRESS} is listed on {ZEN}"].get_content()
    top = listing.index(f"Accounts that sent most through {ADDRESS} in the hour before:")
    assert listing.index("  beta: 60 recipients") > top
    assert listing.index("  acme: 8 recipients") > listing.index("  beta: 60 recipients")
    assert "  gamma: 3 recipients" in listing.split("without alerts.sending_address")[1]
    surge = mails["[sendwarden] Account beta is sending 6 times its usual hourly volume"]
    assert "usually sends to about 10 in a busy hour" in surge.get_content()

    smtp_sink.clear()
    again = AlertService(settings, client).sweep()  # still true: not told twice
    assert again.sent == []


def test_quiet_accounts_and_thin_history_raise_nothing(
    redis_server: RedisServer, dns: DnsServer, smtp_sink: SmtpSink, client: redis.Redis
) -> None:
    settings = make_settings(redis_server, dns, smtp_sink)
    counter = counter_from_settings(settings, client)
    assert counter.reserve("acme", 7, 1000).admitted  # 70% of 10: under the 80% share
    recorder = VolumeRecorder(VolumeStore(client, "sw"), ADDRESS, interval=60)
    sent(recorder, "beta", 500)  # a big hour, but no usual volume to compare with yet
    assert counter.reserve("beta", 500, 1000).admitted
    recorder.close()
    report = AlertService(settings, client).sweep()
    assert report.sent == [] and not report.problems


def test_accounts_the_config_does_not_list_are_warned_about_too(
    redis_server: RedisServer,
    dns: DnsServer,
    smtp_sink: SmtpSink,
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    """A customer only the provider's domain map knows, and a proven login no account
    lists, are near their limits as much as a configured account would be."""
    domain_map = tmp_path / "userdomains"
    domain_map.write_text("delta.example: delta\n")
    settings = settings_from_mapping(
        {
            "redis": {"url": redis_server.url},
            "policy": {"recipients_per_hour": 10},
            "directory": {"domain_map": str(domain_map)},
            "alerts": {
                "near_limit_share": 0.8,
                "mail_to": ["abuse@hosting.example"],
                "smtp_server": f"127.0.0.1:{smtp_sink.port}",
            },
        }
    )
    counter = counter_from_settings(settings, client)
    recorder = VolumeRecorder(VolumeStore(client, "sw"), ADDRESS, interval=60)
    for account in ("delta", "login:mallory@freemail.example", "quiet"):
        recipients = 2 if account == "quiet" else 9
        assert counter.reserve(account, recipients, 10).admitted
        sent(recorder, account, recipients)
    recorder.close()
    report = AlertService(settings, client).sweep()
    assert not report.failed and not report.problems, report
    subjects = sorted(str(mail.message["Subject"]) for mail in smtp_sink.wait_for(2))
    assert subjects == [
        "[sendwarden] Account delta has used 90% of its hourly limit",
        "[sendwarden] Account login:mallory@freemail.example has used 90% of its hourly limit",
    ]
