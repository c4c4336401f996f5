"""The rate-limit check in the real pipeline on a real Redis: per-recipient deferral,
quota returned on abort, sendmail(1) mail judged whole, automatic suspension seen
by the MAIL check, Redis outages, and the ``sendwarden ratelimit`` command."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.cli import main
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.redis_server import RedisServer

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
LOCAL = Client(
    address=ipaddress.ip_address("127.0.0.1"), hostname="localhost", local_submission=True
)


def config(url: str, **policy: Any) -> dict[str, Any]:
    return {
        "redis": {"url": url, "timeout_ms": 300},
        "policy": {
            "local_domains": ["hosting.example"],
            "trusted_networks": ["127.0.0.1/32"],
            "recipients_per_hour": 5,
            **policy,
        },
        "ratelimit": {"suspend_after": 2, "suspend_period": "1h"},
        "accounts": [
            {"id": "acme", "logins": ["alice@acme.example"], "uids": [1001]},
            {"id": "globex", "logins": ["bob@globex.example"], "recipients_per_hour": 2},
        ],
    }


@pytest.fixture
def setup(redis_server: RedisServer) -> Iterator[tuple[Pipeline, redis.Redis, Settings]]:
    settings = settings_from_mapping(config(redis_server.url))
    client = connect(settings.redis)
    checks = [
        SuspensionCheck(RedisSuspensionStore(client, settings.redis.key_prefix)),
        RelayCheck(settings.policy.local_domains),
        RecipientRateCheck(counter_from_settings(settings, client), settings),
    ]
    yield Pipeline(settings, checks), client, settings
    client.close()


def send(
    pipeline: Pipeline, login: str, recipients: list[str], *, abort: bool = False
) -> list[str]:
    """One SMTP transaction: the MAIL reply if it refused, else each RCPT reply and EOM."""
    txn = pipeline.begin(REMOTE, login=login, mail_from="sender@example.com")
    mail = pipeline.mail(txn)
    if mail.is_final:
        return [mail.reply()]
    replies = [pipeline.rcpt(txn, rcpt).reply() for rcpt in recipients]
    if abort:
        pipeline.abort(txn)
    else:
        replies.append(pipeline.eom(txn).reply())
    return replies


def used(client: redis.Redis, settings: Settings, account: str) -> int:
    return counter_from_settings(settings, client).usage(account).used


def test_limit_per_recipient_across_messages_and_accounts(setup: Any) -> None:
    pipeline, client, settings = setup
    first = send(pipeline, "alice@acme.example", [f"a{i}@example.net" for i in range(3)])
    assert first == [""] * 4
    second = send(pipeline, "alice@acme.example", [f"b{i}@example.net" for i in range(3)])
    assert second[:2] == ["", ""]
    assert second[2].startswith("451 4.7.1 Account acme has reached its limit of 5 recipients")
    assert "capacity frees up at" in second[2]
    assert second[3] == ""  # the message still goes to the two accepted recipients
    assert send(pipeline, "bob@globex.example", ["c@example.net"]) == ["", ""]
    assert used(client, settings, "acme") == 5
    assert used(client, settings, "globex") == 1


def test_aborted_transaction_returns_its_quota(setup: Any) -> None:
    pipeline, client, settings = setup
    send(pipeline, "alice@acme.example", ["a@x.net", "b@x.net", "c@x.net"], abort=True)
    assert used(client, settings, "acme") == 0
    assert send(pipeline, "alice@acme.example", [f"r{i}@x.net" for i in range(5)]) == [""] * 6


def test_sendmail_submission_is_judged_whole(setup: Any) -> None:
    pipeline, client, settings = setup

    def submit(recipients: list[str]) -> str:
        txn = pipeline.begin(LOCAL, login=None, mail_from="alice")
        pipeline.mail(txn)
        for rcpt in recipients:
            pipeline.rcpt(txn, rcpt)
        txn.uid = 1001  # what the adapter reads from the queue file
        return pipeline.eom(txn).reply()

    assert submit(["a@x.net", "b@x.net", "c@x.net"]) == ""
    assert submit(["d@x.net", "e@x.net", "f@x.net"]).startswith("451 4.7.1 Account acme")
    assert used(client, settings, "acme") == 3
    assert submit(["d@x.net", "e@x.net"]) == ""
    assert used(client, settings, "acme") == 5


def test_repeated_excess_suspends_the_account_at_mail(setup: Any) -> None:
    pipeline, client, _ = setup
    send(pipeline, "bob@globex.example", ["a@x.net", "b@x.net"])
    refused = send(pipeline, "bob@globex.example", ["c@x.net"])  # strike 1
    assert refused[0].startswith("451 4.7.1") and "suspended" not in refused[0]
    client.delete("sw:{globex}:rate")  # the window empties by itself after an hour
    send(pipeline, "bob@globex.example", ["a@x.net", "b@x.net"])
    refused = send(pipeline, "bob@globex.example", ["c@x.net", "d@x.net"])  # strike 2
    assert refused[0].startswith("451 4.7.1") and "now suspended" in refused[0]
    assert refused[-1].startswith("550 5.7.1 Account globex is suspended")
    again = send(pipeline, "bob@globex.example", ["e@x.net"])
    assert again == [again[0]] and again[0].startswith("550 5.7.1 Account globex is suspended")
    assert "limit of 2 recipients per hour was reached 2 times within 1 hour" in again[0]
    assert send(pipeline, "alice@acme.example", ["a@x.net"]) == ["", ""]  # others unaffected


def test_redis_outage_tempfails_logs_once_and_recovers(
    setup: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, client, settings = setup
    assert send(pipeline, "alice@acme.example", ["a@x.net"]) == ["", ""]
    redis_server.stop()
    caplog.set_level(logging.ERROR, logger="sendwarden.pipeline")
    try:
        for _ in range(3):
            replies = send(pipeline, "alice@acme.example", ["b@x.net"])
            assert replies[0].startswith("451 4.3.0"), replies
    finally:
        redis_server.start()
    outages = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outages) == 1, [r.getMessage() for r in outages]
    assert send(pipeline, "alice@acme.example", ["c@x.net"]) == ["", ""]
    assert used(client, settings, "acme") == 1  # a restarted, empty Redis


def test_quota_of_a_message_aborted_during_an_outage_is_given_back_later(
    setup: Any, redis_server: RedisServer
) -> None:
    pipeline, client, settings = setup
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    pipeline.mail(txn)
    for rcpt in ["a@x.net", "b@x.net", "c@x.net"]:
        assert pipeline.rcpt(txn, rcpt).reply() == ""
    assert redis_server.command("SAVE") == b"+OK\r\n"  # the counts survive the restart
    redis_server.stop()
    try:
        pipeline.abort(txn)  # the refund fails: Redis is down
    finally:
        redis_server.start()
        (redis_server.root / "dump.rdb").unlink()  # later restarts must start empty
    # Counted so far: MAIL's batch (one, at this limit); b and c were accepted within
    # the room MAIL saw, to be counted at end of message, which never came.
    assert used(client, settings, "acme") == 1
    # The next reservation pays what was owed first.
    assert send(pipeline, "alice@acme.example", ["d@x.net"]) == ["", ""]
    assert used(client, settings, "acme") == 1


def test_redis_outage_with_on_store_error_accept(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from_mapping(config(redis_server.url, on_store_error="accept"))
    client = connect(settings.redis)
    pipeline = Pipeline(
        settings, [RecipientRateCheck(counter_from_settings(settings, client), settings)]
    )
    caplog.set_level(logging.WARNING, logger="sendwarden.pipeline")
    redis_server.stop()
    try:
        for _ in range(3):
            assert send(pipeline, "alice@acme.example", ["a@x.net"]) == ["", ""]
    finally:
        redis_server.start()
        client.close()
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "unavailable" in m]) == 1, messages
    assert not [m for m in messages if "available again" in m], messages


def test_cli_status_and_reset(
    setup: Any, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = setup[0]
    send(pipeline, "alice@acme.example", [f"a{i}@x.net" for i in range(6)])
    path = tmp_path / "sendwarden.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_server.url}"\n[policy]\nrecipients_per_hour = 5\n'
        '[ratelimit]\nsuspend_after = 2\nsuspend_period = "1h"\n'
        f'[consent]\ndatabase = "sqlite:///{tmp_path / "consent.db"}"\n'
        '[[accounts]]\nid = "acme"\nlogins = ["alice@acme.example"]\n'
    )
    assert main(["ratelimit", "status", "acme", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "account acme: 5 of 5 recipients used in the last hour" in out
    assert "capacity frees up from" in out and "UTC (in" in out
    assert "limit reached 1 time(s) in the last 1 hour; suspended automatically at 2" in out
    assert main(["ratelimit", "reset", "acme", "-c", str(path)]) == 0
    assert main(["ratelimit", "status", "acme", "-c", str(path)]) == 0
    assert "account acme: 0 of 5 recipients used" in capsys.readouterr().out
    assert main(["account", "suspend", "acme", "-c", str(path)]) == 0
    assert main(["ratelimit", "status", "acme", "-c", str(path)]) == 0
    assert "SUSPENDED since" in capsys.readouterr().out
    assert main(["ratelimit", "status", "nobody", "-c", str(path)]) == 2  # unknown account
