"""When the abuse desk hears about a condition: new, reminded, resolved, never on a
sweep that could not look, and again next sweep when delivery failed."""

from __future__ import annotations

from sendwarden.alerts.findings import ACCOUNT_AT_RISK, DNSBL_LISTING, Finding
from sendwarden.alerts.rules import Alert, Reported, after_delivery, due_alerts

DAY = 86400.0
LISTED = Finding(
    "dnsbl:192.0.2.10:zen.example", DNSBL_LISTING, "192.0.2.10 is listed on zen.example"
)
RISKY = Finding("risk:acme", ACCOUNT_AT_RISK, "Account acme was refused 30 times in the last hour")


def reported(finding: Finding, since: float, last_sent: float) -> Reported:
    return Reported(finding.kind, finding.subject, since, last_sent)


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(alert.kind, alert.finding.key) for alert in alerts]


def test_a_new_condition_is_reported_once() -> None:
    alerts = due_alerts([LISTED], {}, now=1000.0, remind_after=DAY)
    assert kinds(alerts) == [("new", LISTED.key)]
    assert alerts[0].subject == LISTED.subject and alerts[0].since == 1000.0
    state = after_delivery({}, alerts, now=1000.0)
    assert state == {LISTED.key: reported(LISTED, 1000.0, 1000.0)}
    assert due_alerts([LISTED], state, now=1900.0, remind_after=DAY) == []


def test_a_lasting_condition_is_reminded_after_remind_after() -> None:
    state = {LISTED.key: reported(LISTED, 0.0, 0.0)}
    assert due_alerts([LISTED], state, now=DAY - 1, remind_after=DAY) == []
    alerts = due_alerts([LISTED], state, now=DAY, remind_after=DAY)
    assert kinds(alerts) == [("reminder", LISTED.key)]
    assert alerts[0].subject.startswith("Still: ") and alerts[0].since == 0.0
    after = after_delivery(state, alerts, now=DAY)
    assert after[LISTED.key] == reported(LISTED, 0.0, DAY)  # since kept, last_sent moved


def test_a_condition_no_longer_seen_is_resolved_and_forgotten() -> None:
    state = {LISTED.key: reported(LISTED, 0.0, 0.0)}
    alerts = due_alerts([], state, now=600.0, remind_after=DAY)
    assert kinds(alerts) == [("resolved", LISTED.key)]
    assert alerts[0].subject == "Resolved: " + LISTED.subject
    assert after_delivery(state, alerts, now=600.0) == {}


def test_an_undetermined_condition_is_neither_resolved_nor_reminded_as_new() -> None:
    state = {LISTED.key: reported(LISTED, 0.0, 0.0)}
    assert due_alerts([], state, now=600.0, remind_after=DAY, undetermined={LISTED.key}) == []


def test_an_undelivered_alert_changes_nothing_so_it_is_sent_again() -> None:
    alerts = due_alerts([LISTED, RISKY], {}, now=10.0, remind_after=DAY)
    state = after_delivery({}, [alerts[1]], now=10.0)  # only the second got through
    assert kinds(due_alerts([LISTED, RISKY], state, now=20.0, remind_after=DAY)) == [
        ("new", LISTED.key)
    ]


def test_new_alerts_come_before_reminders_and_resolutions() -> None:
    gone = Finding("risk:globex", ACCOUNT_AT_RISK, "Account globex was refused 40 times")
    state = {RISKY.key: reported(RISKY, 0.0, 0.0), gone.key: reported(gone, 0.0, 0.0)}
    alerts = due_alerts([RISKY, LISTED], state, now=DAY, remind_after=DAY)
    assert kinds(alerts) == [
        ("new", LISTED.key),
        ("reminder", RISKY.key),
        ("resolved", gone.key),
    ]
    assert alerts[2].finding.subject == gone.subject and alerts[2].finding.kind == ACCOUNT_AT_RISK


def test_a_reminder_carries_the_latest_subject() -> None:
    state = {RISKY.key: reported(RISKY, 0.0, 0.0)}
    worse = Finding(
        RISKY.key, ACCOUNT_AT_RISK, "Account acme was refused 90 times in the last hour"
    )
    alerts = due_alerts([worse], state, now=DAY, remind_after=DAY)
    assert after_delivery(state, alerts, now=DAY)[RISKY.key].subject == worse.subject
