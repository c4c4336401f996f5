"""Whole sweeps on real servers: a loopback DNS server playing the DNSBLs, Redis with
the milter's refusal counts and suspensions, an SMTP sink as the abuse desk's mailbox
and a webhook receiver as its chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendwarden.alerts.risk import RiskStore
from sendwarden.alerts.service import AlertService
from sendwarden.cli import main
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.policy.suspension import Suspension
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.clock import ManualClock
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServer
from tests.support.sink import SmtpSink
from tests.support.webhook import WebhookReceiver

ZEN = "zen.spamhaus.org"
LISTING = f"10.2.0.192.{ZEN}"  # 192.0.2.10 on zen
DAY = 86400.0


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def alert_config(
    redis_server: RedisServer, dns: DnsServer, sink: SmtpSink, webhook: WebhookReceiver
) -> dict[str, Any]:
    return {
        "redis": {"url": redis_server.url, "timeout_ms": 500},
        "alerts": {
            "monitored_networks": ["192.0.2.10/31"],  # .10 and .11
            "dnsbl_zones": [ZEN],
            "dns_servers": [dns.address],
            "dns_timeout_ms": 300,
            "risk_refusals_per_hour": 3,
            "mail_to": ["abuse@hosting.example"],
            "mail_from": "sendwarden@hosting.example",
            "smtp_server": f"127.0.0.1:{sink.port}",
            "webhook_url": webhook.url,
        },
        "accounts": [{"id": "acme"}, {"id": "globex"}, {"id": "initech"}],
    }


@pytest.fixture
def settings(
    redis_server: RedisServer, dns: DnsServer, smtp_sink: SmtpSink, webhook: WebhookReceiver
) -> Settings:
    return settings_from_mapping(alert_config(redis_server, dns, smtp_sink, webhook))


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


def subjects(sink: SmtpSink) -> list[str]:
    return [str(mail.message["Subject"]) for mail in sink.messages]


def test_each_condition_is_reported_once_reminded_and_resolved(
    settings: Settings, client: redis.Redis, dns: DnsServer, smtp_sink: SmtpSink,
    webhook: WebhookReceiver,
) -> None:  # fmt: skip
    dns.publish_a(LISTING, "127.0.0.2")
    dns.publish(LISTING, "https://check.spamhaus.org/sbl/query/SBL1")
    RiskStore(client).record("acme", "recipient-rate", 4)
    RiskStore(client).record("initech", "bulk-consent", 1)  # under the threshold
    RedisSuspensionStore(client).suspend(
        "globex", Suspension(reason="limit reached 5 times", since="2027-01-15T10:00:00Z")
    )
    clock = ManualClock(1_800_000_000.0)
    service = AlertService(settings, client, clock=clock)

    report = service.sweep()
    assert report.failed == [] and report.problems == []
    expected = [
        "[sendwarden] 192.0.2.10 is listed on zen.spamhaus.org",
        "[sendwarden] Account acme was refused 4 times in the last hour",
        "[sendwarden] Account globex is suspended",
    ]
    assert sorted(subjects(smtp_sink)) == sorted(expected)
    listing = next(m for m in smtp_sink.messages if "listed" in str(m.message["Subject"]))
    body = listing.message.get_content()
    assert "127.0.0.2" in body and "SBL" in body and "SBL1" in body
    assert sorted(document["key"] for document in webhook.received) == [
        "dnsbl:192.0.2.10:zen.spamhaus.org", "risk:acme", "suspended:globex",
    ]  # fmt: skip

    clock.now += 600
    assert service.sweep().sent == []  # nothing new: nothing sent
    assert len(smtp_sink.messages) == 3

    clock.now += DAY
    assert sorted(service.sweep().sent) == sorted(
        "Still: " + subject.removeprefix("[sendwarden] ") for subject in expected
    )

    dns.withdraw(LISTING)
    RedisSuspensionStore(client).lift("globex")
    client.delete(RiskStore(client).key("acme"))
    clock.now += 600
    assert sorted(service.sweep().sent) == sorted(
        "Resolved: " + subject.removeprefix("[sendwarden] ") for subject in expected
    )
    assert service.sweep().sent == []
    assert client.hlen("sw:alerts:reported") == 0


def test_a_dnsbl_that_cannot_be_checked_is_an_alert_and_resolves_nothing(
    settings: Settings, client: redis.Redis, dns: DnsServer, smtp_sink: SmtpSink
) -> None:
    dns.publish_a(LISTING, "127.0.0.2")
    service = AlertService(settings, client)
    assert service.sweep().sent == ["192.0.2.10 is listed on zen.spamhaus.org"]
    dns.unanswered(ZEN)  # the resolver dies; the listing is still there, unseen
    report = service.sweep()
    assert report.sent == ["DNSBL zen.spamhaus.org could not be checked"]
    mail = smtp_sink.wait_for(2)[1].message
    assert "no answer within 300 ms" in mail.get_content()
    # Still reported as listed: a sweep that could not look resolves nothing.
    assert client.hexists("sw:alerts:reported", "dnsbl:192.0.2.10:zen.spamhaus.org")
    dns.withdraw(LISTING)
    assert service.sweep().sent == []  # still nobody answers: still undetermined


def test_an_alert_that_was_not_delivered_is_sent_on_the_next_sweep(
    settings: Settings, client: redis.Redis, smtp_sink: SmtpSink, webhook: WebhookReceiver
) -> None:
    RiskStore(client).record("acme", "forged-sender", 3)
    service = AlertService(settings, client)
    webhook.status = 500
    report = service.sweep()
    assert report.sent == [] and len(report.failed) == 1
    assert "answered 500" in report.failed[0]
    webhook.status = 204
    assert service.sweep().sent == ["Account acme was refused 3 times in the last hour"]
    assert len(smtp_sink.messages) == 2  # mail got it twice: better than never


def test_two_hosts_share_what_was_reported(
    settings: Settings, client: redis.Redis, smtp_sink: SmtpSink, redis_server: RedisServer
) -> None:
    RiskStore(client).record("acme", "recipient-rate", 10)
    first = AlertService(settings, client)
    other_client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        second = AlertService(settings, other_client)
        assert len(first.sweep().sent) == 1
        assert second.sweep().sent == []
    finally:
        other_client.close()
    assert len(smtp_sink.messages) == 1


def write_config(tmp_path: Path, settings_doc: dict[str, Any]) -> str:
    alerts = settings_doc["alerts"]
    path = tmp_path / "sendwarden.toml"
    path.write_text(
        f"""
[redis]
url = "{settings_doc["redis"]["url"]}"

[alerts]
monitored_networks = {alerts["monitored_networks"]!r}
dnsbl_zones = {list(alerts["dnsbl_zones"])!r}
dns_servers = {alerts["dns_servers"]!r}
dns_timeout_ms = 300
risk_refusals_per_hour = 3
mail_to = ["abuse@hosting.example"]
smtp_server = "{alerts["smtp_server"]}"

[[accounts]]
id = "acme"
""".replace("'", '"')
    )
    return str(path)


def test_the_alerts_command(
    redis_server: RedisServer, dns: DnsServer, smtp_sink: SmtpSink, webhook: WebhookReceiver,
    client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = write_config(tmp_path, alert_config(redis_server, dns, smtp_sink, webhook))
    RiskStore(client).record("acme", "recipient-rate", 5)
    RiskStore(client).record("acme", "bulk-consent", 2)

    assert main(["alerts", "risk", "-c", config]) == 0
    out = capsys.readouterr().out
    assert "acme: 7 refusal(s) in the last hour AT RISK" in out
    assert "bulk-consent 2, recipient-rate 5" in out

    assert main(["alerts", "run", "--once", "-c", config]) == 0
    out = capsys.readouterr().out
    assert "sent: Account acme was refused 7 times in the last hour" in out
    assert smtp_sink.wait_for(1)

    assert main(["alerts", "status", "-c", config]) == 0
    assert "Account acme was refused 7 times in the last hour  [risk:acme" in (
        capsys.readouterr().out
    )

    assert main(["alerts", "test", "-c", config]) == 0
    assert "test alert delivered (log, mail)" in capsys.readouterr().out
    assert (
        str(smtp_sink.wait_for(2)[1].message["Subject"])
        == "[sendwarden] Test alert from sendwarden"
    )

    smtp_sink.stop()  # the abuse desk's mail server is down
    assert main(["alerts", "test", "-c", config]) == 1
    assert "NOT DELIVERED: mail to abuse@hosting.example" in capsys.readouterr().out


def test_accounts_from_the_directory_are_swept_too(
    redis_server: RedisServer, dns: DnsServer, smtp_sink: SmtpSink, webhook: WebhookReceiver,
    client: redis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    userdomains = tmp_path / "userdomains"
    userdomains.write_text("webcust.example: webcust\n")
    config = alert_config(redis_server, dns, smtp_sink, webhook)
    config["alerts"]["monitored_networks"] = []
    config["directory"] = {"domain_map": str(userdomains)}
    service = AlertService(settings_from_mapping(config), client)
    RiskStore(client).record("webcust", "recipient-rate", 5)
    report = service.sweep()
    assert report.sent == ["Account webcust was refused 5 times in the last hour"]
    userdomains.write_text("broken\n")  # the config's accounts are still swept
    report = service.sweep()
    assert any("account directory" in p and "line 1" in p for p in report.problems)
