"""One sweep: look (DNSBLs, account refusals, suspensions), decide what the desk must
hear (:mod:`sendwarden.alerts.rules`), tell it, remember what it was told."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from sendwarden import metrics
from sendwarden.alerts.dnsbl import (
    DnsblAnswer,
    DnsblChecker,
    checker_from_settings,
    listing_findings,
    monitored_addresses,
    undetermined_keys,
)
from sendwarden.alerts.early import EarlyWarnings, VolumeStore
from sendwarden.alerts.findings import MONITORING_FAILED, Finding
from sendwarden.alerts.notify import Notifier, deliver, notifiers_from_settings
from sendwarden.alerts.risk import RiskStore, account_risks, risk_findings
from sendwarden.alerts.rules import after_delivery, due_alerts
from sendwarden.alerts.state import ReportedStore
from sendwarden.config import Settings
from sendwarden.directory.explain import ids_in, open_directory
from sendwarden.directory.sources import SourceError
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store import StoreError
from sendwarden.store.suspensions import RedisSuspensionStore

log = logging.getLogger(__name__)

#: Keys of the conditions the account sweep reports (undetermined when Redis fails).
ACCOUNT_KEY_PREFIXES = ("risk:", "suspended:", "near-limit:", "surge:")


@dataclass
class SweepReport:
    """What one sweep saw and did, for the log and ``alerts run --once``."""

    swept: bool = True  # False: another host was sweeping
    findings: list[Finding] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # subjects of delivered alerts
    failed: list[str] = field(default_factory=list)  # alerts not delivered, and why
    problems: list[str] = field(default_factory=list)  # what could not be looked at

    def summary(self) -> str:
        if not self.swept:
            return "another host is sweeping; skipped"
        return (
            f"{len(self.findings)} condition(s) seen, {len(self.sent)} alert(s) sent, "
            f"{len(self.failed)} not delivered, {len(self.problems)} problem(s) looking"
        )


class AlertService:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        checker: DnsblChecker | None = None,
        notifiers: Sequence[Notifier] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.alerts = settings.alerts
        self.client = client
        prefix = settings.redis.key_prefix
        self._checker = checker or checker_from_settings(self.alerts)
        self._notifiers = (
            list(notifiers) if notifiers is not None else notifiers_from_settings(self.alerts)
        )
        self._risks = RiskStore(client, prefix)
        self._suspensions = RedisSuspensionStore(client, prefix)
        self._reported = ReportedStore(client, prefix)
        self._early = EarlyWarnings(
            settings, counter_from_settings(settings, client), VolumeStore(client, prefix, clock)
        )
        self._clock = clock

    def sweep(self) -> SweepReport:
        """Look once and alert; raises StoreError when Redis (the shared state) is down."""
        report = SweepReport()
        with self._reported.sweep_lock() as acquired:
            if not acquired:
                report.swept = False
                return report
            undetermined, unknown_prefixes = self._look(report)
            reported = self._reported.load()
            now = self._clock()
            undetermined |= {key for key in reported if key.startswith(unknown_prefixes)}
            alerts = due_alerts(
                report.findings, reported, now, self.alerts.remind_after, undetermined
            )
            delivered = []
            recorder = metrics.current()
            for alert in alerts:
                failures = deliver(alert, self._notifiers)
                if recorder is not None:
                    result = "failed" if failures else "sent"
                    recorder.alerts.labels(alert.finding.kind, result).inc()
                if failures:
                    report.failed.append(f"{alert.subject}: {'; '.join(failures)}")
                else:
                    delivered.append(alert)
                    report.sent.append(alert.subject)
            self._reported.save(reported, after_delivery(reported, delivered, now))
        for failure in report.failed:
            log.error("alert not delivered, retried next sweep: %s", failure)
        return report

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``alerts.interval`` seconds until ``stop`` is set."""
        outage = False
        while not stop.is_set():
            try:
                report = self.sweep()
            except StoreError as error:
                if not outage:
                    log.error("alert sweep failed, retrying every sweep: %s", error)
                outage = True
            else:
                if outage:
                    log.warning("alert sweeps work again")
                outage = False
                log.info("alert sweep: %s", report.summary())
            stop.wait(self.alerts.interval)

    # -- looking ----------------------------------------------------------------------

    def _look(self, report: SweepReport) -> tuple[set[str], tuple[str, ...]]:
        """Fill ``report.findings``; return the keys, and the key prefixes, of the
        conditions this sweep could not determine."""
        undetermined: set[str] = set()
        addresses = monitored_addresses(self.alerts.monitored_networks)
        if addresses and self.alerts.dnsbl_zones:
            answers = self._checker.check(addresses)
            recorder = metrics.current()
            if recorder is not None:
                for answer in answers:
                    if answer.status in ("listed", "clear"):
                        listed = 1 if answer.status == "listed" else 0
                        recorder.dnsbl_listed.labels(answer.address, answer.zone).set(listed)
            report.findings += self._early.with_top_senders(listing_findings(answers))
            report.findings += zone_failure_findings(answers)
            undetermined |= undetermined_keys(answers)
        with contextlib.ExitStack() as stack:
            try:
                directory = stack.enter_context(open_directory(self.settings))
                account_ids = ids_in(directory)
                find = directory.accounts.get
            except SourceError as error:  # the config's accounts are still looked at
                report.problems.append(f"account directory: {error}")
                account_ids = [account.id for account in self.settings.accounts]
                find = AccountDirectory(self.settings.accounts).get
            try:
                risks = account_risks(self._risks, self._suspensions, account_ids)
            except StoreError as error:
                report.problems.append(f"account refusals: {error}")
                return undetermined, ACCOUNT_KEY_PREFIXES
            report.findings += risk_findings(risks, self.alerts.risk_refusals_per_hour)
            try:
                report.findings += self._early.account_findings(find)
            except StoreError as error:
                report.problems.append(f"account volumes: {error}")
                return undetermined, ACCOUNT_KEY_PREFIXES
        return undetermined, ()


def zone_failure_findings(answers: Sequence[DnsblAnswer]) -> list[Finding]:
    """A zone none of whose lookups worked is not being monitored: the desk must know,
    or a silent monitor reads as "not listed"."""
    by_zone: dict[str, list[DnsblAnswer]] = {}
    for answer in answers:
        by_zone.setdefault(answer.zone, []).append(answer)
    findings = []
    for zone, zone_answers in sorted(by_zone.items()):
        if any(answer.status in ("listed", "clear") for answer in zone_answers):
            continue
        details = sorted({answer.detail or answer.status for answer in zone_answers})
        findings.append(
            Finding(
                key=f"monitoring:dnsbl:{zone}",
                kind=MONITORING_FAILED,
                subject=f"DNSBL {zone} could not be checked",
                lines=(
                    f"None of the {len(zone_answers)} lookups in {zone} got an answer:",
                    *(f"  {detail}" for detail in details[:5]),
                    "Listings on this list go unnoticed until this is fixed: check "
                    "alerts.dns_servers (Spamhaus refuses queries from public resolvers) "
                    "and the zone name.",
                ),
                facts={"zone": zone, "failures": details, "lookups": len(zone_answers)},
            )
        )
    return findings
