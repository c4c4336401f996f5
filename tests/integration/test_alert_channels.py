"""Alert delivery on real channels (an SMTP sink, a webhook receiver) and what was
reported, kept in a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from sendwarden.alerts.findings import DNSBL_LISTING, Finding
from sendwarden.alerts.notify import MailNotifier, WebhookNotifier, deliver
from sendwarden.alerts.rules import Alert, Reported
from sendwarden.alerts.state import ReportedStore
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sink import SmtpSink
from tests.support.webhook import WebhookReceiver

LISTED = Finding(
    "dnsbl:192.0.2.10:zen.example",
    DNSBL_LISTING,
    "192.0.2.10 is listed on zen.example",
    lines=("127.0.0.2: SBL", "Find the account sending through 192.0.2.10."),
    facts={"address": "192.0.2.10", "zone": "zen.example"},
)
ALERT = Alert("new", LISTED, 1_700_000_000.0)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


def test_mail_reaches_the_abuse_desk(smtp_sink: SmtpSink) -> None:
    notifier = MailNotifier(f"127.0.0.1:{smtp_sink.port}", "sendwarden@hosting.example",
                            ["abuse@hosting.example", "noc@hosting.example"])  # fmt: skip
    assert deliver(ALERT, [notifier]) == []
    (mail,) = smtp_sink.wait_for(1)
    assert sorted(mail.rcpt_tos) == ["abuse@hosting.example", "noc@hosting.example"]
    message = mail.message
    assert message["Subject"] == "[sendwarden] 192.0.2.10 is listed on zen.example"
    assert message["Auto-Submitted"] == "auto-generated"
    # Without a login the mail cannot prove it is sendwarden's: no sendwarden header,
    # which the milter would refuse (issue 14.1); with one, the e2e test shows it.
    assert message["X-Sendwarden-Alert"] is None
    body = message.get_content()
    assert "127.0.0.2: SBL" in body and "First reported: 2023-11-14T22:13:20Z" in body


def test_the_webhook_gets_one_json_object(webhook: WebhookReceiver) -> None:
    assert deliver(ALERT, [WebhookNotifier(webhook.url)]) == []
    (document,) = webhook.received
    assert document["alert"] == "new" and document["kind"] == DNSBL_LISTING
    assert document["key"] == LISTED.key and document["subject"] == LISTED.subject
    assert document["facts"] == {"address": "192.0.2.10", "zone": "zen.example"}
    assert document["since"] == "2023-11-14T22:13:20Z"


def test_failing_channels_are_reported_in_words(webhook: WebhookReceiver) -> None:
    webhook.status = 503
    nobody = MailNotifier(
        f"127.0.0.1:{free_port()}", "sw@hosting.example", ["abuse@hosting.example"]
    )
    failures = deliver(ALERT, [nobody, WebhookNotifier(webhook.url)])
    assert len(failures) == 2
    assert failures[0].startswith("mail to abuse@hosting.example via 127.0.0.1:")
    assert "answered 503" in failures[1]


def test_reported_conditions_round_trip_and_only_changes_are_written(client: redis.Redis) -> None:
    store = ReportedStore(client, "sw")
    assert store.load() == {}
    first = {LISTED.key: Reported(LISTED.kind, LISTED.subject, 1.0, 1.0)}
    store.save({}, first)
    assert store.load() == first
    later = {LISTED.key: Reported(LISTED.kind, LISTED.subject, 1.0, 99.0)}
    store.save(first, later)
    assert store.load() == later
    store.save(later, {})
    assert store.load() == {} and not client.exists("sw:alerts:reported")


def test_an_unreadable_entry_is_dropped_not_fatal(client: redis.Redis) -> None:
    client.hset("sw:alerts:reported", "risk:acme", b"{not json")
    assert ReportedStore(client, "sw").load() == {}


def test_one_sweep_at_a_time(client: redis.Redis) -> None:
    store, other_host = ReportedStore(client, "sw"), ReportedStore(client, "sw")
    with store.sweep_lock() as mine:
        assert mine
        with other_host.sweep_lock() as theirs:
            assert not theirs
    with other_host.sweep_lock() as theirs:
        assert theirs  # released at the end of the first sweep
