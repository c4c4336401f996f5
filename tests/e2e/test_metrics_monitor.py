"""Metrics and monitor-only mode end to end: mixed mail through a real Postfix, then
the milter's /metrics is scraped and its counts checked against what was sent; a
refusal-worthy message under monitor-only mode is delivered and recorded as
``monitor`` (decision log, metrics, ``sendwarden report``)."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.rig import Rig
from tests.support.sendwarden_config import DEFAULT_ACCOUNT, DEFAULT_SASL_USERS
from tests.support.service import wait_until

MESSAGE = b"From: Alice <alice@acme.example>\r\nSubject: hello\r\n\r\nHi.\r\n"
SPOOFED = b"From: PayPal <service@paypal.example>\r\nSubject: verify\r\n\r\nClick.\r\n"
NOT_BULK = {"bulk_recipient_threshold": 100_000, "bulk_distinct_recipients_per_hour": 100_000}
BETA = {"id": "beta", "logins": ["bob@beta.example"], "domains": ["beta.example"],
        "monitor_only": True, "recipients_per_hour": 1}  # fmt: skip
USERS = {**DEFAULT_SASL_USERS, "bob@beta.example": "bob-secret"}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_metrics_count_mixed_mail_through_postfix(make_rig: Callable[..., Rig]) -> None:
    port = free_port()
    rig = make_rig(
        policy={"recipients_per_hour": 4},
        consent=NOT_BULK,
        config_extra={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    with rig.smtp("alice@acme.example") as client:
        client.sendmail("alice@acme.example", ["a@remote.example", "b@remote.example"], MESSAGE)
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("alice@acme.example", ["c@remote.example"], SPOOFED)
        assert caught.value.smtp_code == 550
        refused = client.sendmail(
            "alice@acme.example", ["d@remote.example", "e@remote.example", "f@remote.example"],
            MESSAGE,
        )  # fmt: skip
        assert sorted(refused) == ["f@remote.example"]  # 451 4.7.1: over the limit of 4
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("x@else.example", ["y@remote.example"], MESSAGE)  # relay: 554
    rig.sink.wait_for(2)

    def settled() -> dict[Any, float] | None:
        samples = scrape(port)
        return samples if value(samples, "sendwarden_connections_in_flight") == 0 else None

    samples = wait_until(settled, 10, "the milter's connections to close")
    decisions = "sendwarden_decisions_total"
    assert value(samples, decisions, stage="eom", rule="none", verdict="continue") == 2
    assert value(samples, decisions, stage="eom", rule="forged-sender", verdict="reject") == 1
    assert value(samples, decisions, stage="rcpt", rule="recipient-rate", verdict="tempfail") == 1
    assert value(samples, decisions, stage="rcpt", rule="relay", verdict="reject") == 1
    # Every RCPT was timed (6 by alice, 1 relayed), every MAIL and end of message too.
    assert value(samples, "sendwarden_decision_seconds_count", stage="rcpt") == 7
    assert value(samples, "sendwarden_decision_seconds_count", stage="mail") == 4
    assert value(samples, "sendwarden_decision_seconds_count", stage="eom") == 3
    assert value(samples, "sendwarden_store_calls_total", backend="redis") >= 7
    assert value(samples, "sendwarden_store_errors_total", backend="redis") == 0
    assert value(samples, "sendwarden_config_generation") == 1

    status, document = healthz(port)
    assert status == 200, document
    assert document == {"status": "ok", "checks": {"redis": "ok", "consent": "ok"}}
    assert value(scrape(port), "sendwarden_consent_store_events") == 0  # an empty ledger

    assert rig.milter is not None and rig.milter.pid is not None
    os.kill(rig.milter.pid, signal.SIGHUP)
    wait_until(lambda: value(scrape(port), "sendwarden_config_generation") == 2, 10, "the reload")
    assert value(scrape(port), "sendwarden_reloads_total", result="ok") == 1

    assert rig.redis is not None
    rig.redis.close()  # Redis goes away: /healthz says so, the store errors are counted
    status, document = healthz(port)
    assert status == 503 and document["checks"]["redis"].startswith("redis:")
    with rig.smtp("alice@acme.example") as client, pytest.raises(smtplib.SMTPException):
        client.sendmail("alice@acme.example", ["g@remote.example"], MESSAGE)
    assert value(scrape(port), "sendwarden_store_errors_total", backend="redis") >= 1


def test_monitor_only_lets_refusal_worthy_mail_pass_and_records_it(
    make_rig: Callable[..., Rig],
) -> None:
    port = free_port()
    rig = make_rig(
        accounts=[DEFAULT_ACCOUNT, BETA],
        sasl_users=USERS,
        policy={"monitor_only": ["identity"], "recipients_per_hour": 100},
        consent=NOT_BULK,
        config_extra={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    with rig.smtp("alice@acme.example") as client:  # forged From: watched rule, passes
        assert client.sendmail("alice@acme.example", ["c@remote.example"], SPOOFED) == {}
    with rig.smtp("bob@beta.example") as client:  # a watched account over its limit of 1
        beta = b"From: Bob <bob@beta.example>\r\nSubject: hi\r\n\r\nHi.\r\n"
        recipients = ["r1@remote.example", "r2@remote.example", "r3@remote.example"]
        assert client.sendmail("bob@beta.example", recipients, beta) == {}
    delivered = rig.sink.wait_for(2)
    assert {tuple(sorted(mail.rcpt_tos)) for mail in delivered} == {
        ("c@remote.example",),
        tuple(recipients),
    }

    assert rig.milter is not None
    lines = [json.loads(line) for line in rig.milter.log().splitlines() if line.startswith("{")]
    monitored = [line for line in lines if line.get("verdict") == "monitor"]
    assert [(line["account"], line["rule"], line["stage"]) for line in monitored] == [
        ("acme", "forged-sender", "eom"),
        ("beta", "recipient-rate", "rcpt"),
        ("beta", "recipient-rate", "rcpt"),
    ]
    assert monitored[0]["reply"].startswith("550 5.7.1")
    finals = [line for line in lines if line.get("stage") == "eom" and line["verdict"] != "monitor"]
    assert [line["monitored"] for line in finals] == [["forged-sender"], ["recipient-rate"] * 2]

    samples = scrape(port)
    assert value(samples, "sendwarden_decisions_total", stage="eom", rule="forged-sender",
                 verdict="monitor") == 1  # fmt: skip
    assert value(samples, "sendwarden_decisions_total", stage="rcpt", rule="recipient-rate",
                 verdict="monitor") == 2  # fmt: skip

    summary = rig.command("report")
    assert summary.returncode == 0, summary.stderr
    assert "beta: 2" in summary.stdout and "acme: 1" in summary.stdout
    as_json = [json.loads(line) for line in rig.command("report", "--json").stdout.splitlines()]
    assert as_json == [
        {"account": "beta", "rule": "recipient-rate", "count": 2},
        {"account": "acme", "rule": "forged-sender", "count": 1},
    ]
