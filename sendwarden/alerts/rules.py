"""When the abuse desk hears about a condition: pure, facts in, alerts out.

A condition (a listing, an account at risk) is reported when it is first seen,
reminded of every ``remind_after`` seconds while it lasts, and reported as
resolved once a sweep no longer sees it. A condition a sweep could not determine
(a DNS lookup failed, Redis did not answer) is neither: silence from a broken
monitor must not read as "delisted". Only delivered alerts change what was
reported, so an alert that could not be sent is tried again on the next sweep.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from sendwarden.alerts.findings import Finding

AlertKind = Literal["new", "reminder", "resolved"]


@dataclass(frozen=True)
class Reported:
    """What the desk was last told about one condition."""

    kind: str  # the finding's kind, so a "resolved" alert can say what ended
    subject: str
    since: float  # when the condition was first reported
    last_sent: float  # when an alert about it was last delivered


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    finding: Finding
    since: float  # when the condition was first reported (now, for a new one)

    @property
    def subject(self) -> str:
        prefixes = {"new": "", "reminder": "Still: ", "resolved": "Resolved: "}
        return prefixes[self.kind] + self.finding.subject


def due_alerts(
    findings: Sequence[Finding],
    reported: Mapping[str, Reported],
    now: float,
    remind_after: float,
    undetermined: Collection[str] = (),
) -> list[Alert]:
    """The alerts this sweep should send, new ones first."""
    alerts: list[Alert] = []
    reminders: list[Alert] = []
    seen = set()
    for finding in findings:
        seen.add(finding.key)
        earlier = reported.get(finding.key)
        if earlier is None:
            alerts.append(Alert("new", finding, now))
        elif now - earlier.last_sent >= remind_after:
            reminders.append(Alert("reminder", finding, earlier.since))
    resolved = [
        Alert("resolved", _ended(key, earlier), earlier.since)
        for key, earlier in sorted(reported.items())
        if key not in seen and key not in undetermined
    ]
    return alerts + reminders + resolved


def after_delivery(
    reported: Mapping[str, Reported], delivered: Iterable[Alert], now: float
) -> dict[str, Reported]:
    """What has been reported once ``delivered`` reached the desk."""
    state = dict(reported)
    for alert in delivered:
        key = alert.finding.key
        if alert.kind == "resolved":
            state.pop(key, None)
        elif alert.kind == "new":
            state[key] = Reported(alert.finding.kind, alert.finding.subject, now, now)
        elif key in state:
            state[key] = replace(state[key], subject=alert.finding.subject, last_sent=now)
    return state


def _ended(key: str, earlier: Reported) -> Finding:
    """The finding a "resolved" alert is about, rebuilt from what was reported."""
    return Finding(
        key=key,
        kind=earlier.kind,
        subject=earlier.subject,
        lines=("This condition was no longer seen by the latest check.",),
        facts={"key": key},
    )
