"""The pipeline: stage sequencing, decision records, storage failures."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import Action, Verdict
from tests.unit.fakes import MemorySuspensions, RecordingCheck

CONFIG = {
    "policy": {"local_domains": ["hosting.example"], "trusted_networks": ["127.0.0.1/32"]},
    "accounts": [
        {
            "id": "acme",
            "logins": ["alice@acme.example"],
            "uids": [1001],
            "domains": ["acme.example"],
        }
    ],
}
REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
LOCAL = Client(
    address=ipaddress.ip_address("127.0.0.1"), hostname="localhost", local_submission=True
)


def build(
    on_store_error: str = "tempfail",
) -> tuple[Pipeline, MemorySuspensions, RecordingCheck]:
    document = {**CONFIG, "policy": {**CONFIG["policy"], "on_store_error": on_store_error}}  # type: ignore[dict-item]
    settings: Settings = settings_from_mapping(document)
    suspensions = MemorySuspensions()
    recorder = RecordingCheck()
    checks = [SuspensionCheck(suspensions), RelayCheck(settings.policy.local_domains), recorder]
    return Pipeline(settings, checks), suspensions, recorder


def test_authenticated_message_passes_every_stage(decisions: list[dict[str, object]]) -> None:
    pipeline, _, recorder = build()
    txn = pipeline.begin(
        REMOTE, login="alice@acme.example", mail_from="a@acme.example", queue_id="Q1"
    )
    assert pipeline.mail(txn).action is Action.CONTINUE
    assert pipeline.rcpt(txn, "bob@remote.example").action is Action.CONTINUE
    assert pipeline.eom(txn).action is Action.CONTINUE
    assert recorder.calls == [
        ("mail", "acme"),
        ("rcpt", "bob@remote.example"),
        ("eom", ""),
        ("after", "continue"),
    ]
    (record,) = decisions
    assert record["queue_id"] == "Q1"
    assert record["account"] == "acme"
    assert record["account_source"] == "login"
    assert record["verdict"] == "continue"
    assert record["hits"] == []
    assert record["passed"] == ["suspended", "relay", "recorder"]


def test_relay_refused_recipient_is_logged_and_not_added(
    decisions: list[dict[str, object]],
) -> None:
    pipeline, _, recorder = build()
    txn = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    pipeline.mail(txn)
    verdict = pipeline.rcpt(txn, "bob@remote.example")
    assert verdict.reply().startswith("554 5.7.1")
    assert pipeline.rcpt(txn, "info@hosting.example").action is Action.CONTINUE
    assert txn.recipients == ["info@hosting.example"]
    assert ("rcpt", "bob@remote.example") not in recorder.calls  # refused before it counts
    assert decisions[0]["stage"] == "rcpt"
    assert decisions[0]["hits"] == ["relay"]
    assert decisions[0]["recipient"] == "bob@remote.example"


def test_suspended_account_refused_at_mail(decisions: list[dict[str, object]]) -> None:
    pipeline, suspensions, recorder = build()
    suspensions.suspend("acme", Suspension(reason="spam complaints", since="2026-11-20T10:00:00Z"))
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    verdict = pipeline.mail(txn)
    assert verdict.reply().startswith("550 5.7.1 Account acme is suspended")
    assert "spam complaints" not in verdict.text  # staff's reason: for the log only
    assert recorder.calls == [("after", "reject")]  # settled once, nothing counted
    assert decisions[0]["rule"] == "suspended"
    assert any("spam complaints" in note for note in decisions[0]["notes"])  # type: ignore[attr-defined]


def test_local_submission_is_judged_whole_at_end_of_message() -> None:
    pipeline, suspensions, recorder = build()
    suspensions.suspend("acme", Suspension(reason="abuse", since="2026-11-20T10:00:00Z"))
    txn = pipeline.begin(LOCAL, login=None, mail_from="www-data@host")
    assert pipeline.mail(txn).action is Action.CONTINUE  # no replies before end of message
    assert pipeline.rcpt(txn, "bob@remote.example").action is Action.CONTINUE
    txn.uid = 1001  # the adapter reads it from Postfix's queue file
    verdict = pipeline.eom(txn)
    assert txn.uid == 1001 and txn.account_id == "acme" and txn.account_source == "uid"
    assert verdict.reply().startswith("550 5.7.1 Account acme is suspended")
    assert recorder.calls == [("after", "reject")]


def test_local_submission_runs_mail_and_rcpt_checks_at_eom() -> None:
    pipeline, _, recorder = build()
    txn = pipeline.begin(LOCAL, login=None, mail_from="www-data@host")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "a@remote.example")
    pipeline.rcpt(txn, "b@remote.example")
    txn.uid = 1001
    assert recorder.calls == []
    assert pipeline.eom(txn).action is Action.CONTINUE
    assert recorder.calls == [
        ("mail", "acme"),
        ("rcpt", "a@remote.example"),
        ("rcpt", "b@remote.example"),
        ("eom", ""),
        ("after", "continue"),
    ]


def test_store_down_tempfails_with_451_4_3_0(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, suspensions, _ = build()
    suspensions.down = True
    caplog.set_level(logging.ERROR, logger="sendwarden.pipeline")
    for _ in range(3):
        txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
        verdict = pipeline.mail(txn)
        assert verdict.reply().startswith("451 4.3.0")
        assert "acme" in verdict.text
    outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_lines) == 1  # once per outage, not once per message
    suspensions.down = False
    caplog.set_level(logging.WARNING, logger="sendwarden.pipeline")
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    assert pipeline.mail(txn).action is Action.CONTINUE
    pipeline.eom(txn)  # the first whole transaction without a store failure
    assert any("available again" in r.getMessage() for r in caplog.records)


def test_store_down_with_accept_lets_mail_through() -> None:
    pipeline, suspensions, _ = build(on_store_error="accept")
    suspensions.down = True
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    assert pipeline.mail(txn).action is Action.CONTINUE


def test_unlisted_sender_on_trusted_network_is_its_own_account_and_noted(
    decisions: list[dict[str, object]],
) -> None:
    pipeline, _, _ = build()
    client = Client(address=ipaddress.ip_address("127.0.0.1"), hostname="web1", port=5000)
    txn = pipeline.begin(client, login=None, mail_from="nobody@unknown.example")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "bob@remote.example")
    assert pipeline.eom(txn).action is Action.CONTINUE
    assert decisions[-1]["account"] == "host:127.0.0.1"
    assert decisions[-1]["account_source"] == "trusted-network"
    assert decisions[-1]["notes"] == [
        "unlisted sender host:127.0.0.1 (trusted-network): default limits"
    ]


def test_abort_settles_the_transaction() -> None:
    pipeline, _, recorder = build()
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "b@remote.example")
    pipeline.abort(txn)
    assert recorder.calls[-1] == ("after", "discard")  # the checks give back what they counted


# -- the decision log (issue 13, item 6) -------------------------------------------


def test_every_line_of_a_session_carries_its_id_and_the_queue_id_once_known(
    decisions: list[dict[str, object]],
) -> None:
    pipeline, _, _ = build()
    txn = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example", session="s1")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "bob@remote.example")  # refused before the MTA names the message
    pipeline.rcpt(txn, "info@hosting.example", queue_id="4XyZ1")  # now it has a queue id
    pipeline.rcpt(txn, "eve@remote.example", queue_id="ignored")  # the first one stays
    pipeline.eom(txn)
    assert [(d["stage"], d["session"], d["queue_id"]) for d in decisions] == [
        ("rcpt", "s1", None),
        ("rcpt", "s1", "4XyZ1"),
        ("eom", "s1", "4XyZ1"),
    ]
    other = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    assert other.session and other.session != "s1"  # a fresh one when none is given


def test_passed_never_lists_the_rule_that_fired(decisions: list[dict[str, object]]) -> None:
    pipeline, _, _ = build()
    txn = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "info@hosting.example")  # relay passes this one
    pipeline.rcpt(txn, "bob@remote.example")  # and refuses this one
    pipeline.eom(txn)
    for record in decisions:
        hits, passed = record["hits"], record["passed"]
        assert isinstance(hits, list) and isinstance(passed, list)
        assert not set(hits) & set(passed), record
    assert decisions[0]["hits"] == ["relay"]


def test_an_aborted_transaction_is_logged_as_aborted_not_discard(
    decisions: list[dict[str, object]],
) -> None:
    pipeline, _, _ = build()
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    pipeline.mail(txn)
    pipeline.rcpt(txn, "b@remote.example")
    pipeline.abort(txn)
    (record,) = decisions
    assert (record["stage"], record["verdict"], record["rule"]) == ("abort", "aborted", "aborted")


def test_recipients_removed_for_missing_consent_are_recorded(
    decisions: list[dict[str, object]],
) -> None:
    pipeline, _, _ = build()
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    pipeline.mail(txn)
    for rcpt in ("a@remote.example", "b@remote.example"):
        pipeline.rcpt(txn, rcpt)
    txn.changes.remove_recipients.append("b@remote.example")  # what ConsentCheck does
    pipeline.eom(txn)
    assert decisions[-1]["removed_recipients"] == ["b@remote.example"]


def test_no_decision_record_is_built_when_the_decision_log_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads it, so no one pays for it, whatever the outcome (a refusal, an
    accepted message, a refusal only watched in monitor mode); observers (alerts) are
    still told."""
    caplog.set_level(logging.CRITICAL + 1, logger="sendwarden.decisions")  # log.decisions off

    def no_record(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError("a decision record was built with the decision log off")

    monkeypatch.setattr("sendwarden.pipeline.decision_record", no_record)
    seen: list[tuple[str, str]] = []

    class Observer:
        def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
            seen.append((stage, verdict.action.value))

        def observe_monitored(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
            seen.append((stage, f"watched {verdict.action.value}"))

    pipeline, _, _ = build()
    pipeline = Pipeline(pipeline.settings, pipeline.checks, observers=[Observer()])
    txn = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    assert pipeline.mail(txn).action is Action.CONTINUE
    assert pipeline.rcpt(txn, "bob@remote.example").action is Action.REJECT
    txn = pipeline.begin(REMOTE, login="alice@acme.example", mail_from="a@acme.example")
    assert pipeline.mail(txn).action is Action.CONTINUE
    assert pipeline.rcpt(txn, "bob@remote.example").action is Action.CONTINUE
    assert pipeline.eom(txn).action is Action.CONTINUE
    watching = settings_from_mapping(
        {**CONFIG, "policy": {**CONFIG["policy"], "monitor_only": ["relay"]}}
    )
    checks = [RelayCheck(watching.policy.local_domains)]
    monitored = Pipeline(watching, checks, observers=[Observer()])
    txn = monitored.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    assert monitored.mail(txn).action is Action.CONTINUE
    assert monitored.rcpt(txn, "bob@remote.example").action is Action.CONTINUE  # only watched
    assert seen == [("rcpt", "reject"), ("eom", "continue"), ("rcpt", "watched reject")]


def test_only_the_checks_that_act_per_recipient_or_header_are_called_there(
    decisions: list[dict[str, object]],
) -> None:
    """The suspension check has no recipient or header hook: it is not called per
    recipient or header, and the decision record still lists it as passed (it ran,
    with every other check, at MAIL)."""
    pipeline, _, _ = build()
    assert [check.name for check in pipeline._rcpt_checks] == ["relay", "recorder"]
    assert pipeline._header_checks == () and pipeline._body_checks == ()
    txn = pipeline.begin(REMOTE, login=None, mail_from="x@elsewhere.example")
    pipeline.mail(txn)
    pipeline.header(txn, "Subject", "hello")
    assert txn.headers == [("Subject", "hello")]
    assert pipeline.rcpt(txn, "bob@remote.example").reply().startswith("554 5.7.1")
    assert decisions[0]["hits"] == ["relay"]
    assert decisions[0]["passed"] == ["suspended", "recorder"]
