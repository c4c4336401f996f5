"""``sendwarden alerts run|risk|status|test``: blacklist risk alerts for the abuse desk."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Any

from sendwarden import metrics
from sendwarden.alerts.findings import Finding
from sendwarden.alerts.notify import deliver, iso_time, notifiers_from_settings
from sendwarden.alerts.risk import RiskStore, account_risks
from sendwarden.alerts.rules import Alert
from sendwarden.alerts.service import AlertService
from sendwarden.alerts.state import ReportedStore
from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import ConfigError, Settings, load_settings
from sendwarden.decisionlog import configure_logging
from sendwarden.directory.explain import account_ids
from sendwarden.directory.sources import SourceError
from sendwarden.health import redis_check
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "alerts", run, help="DNSBL listings and risky accounts, for the abuse desk"
    )
    actions = add_actions(parser)
    sweep = actions.add_parser(
        "run", help="check every alerts.interval and alert the abuse desk (SIGTERM stops)"
    )
    sweep.add_argument("--once", action="store_true", help="one sweep, then exit")
    risk = actions.add_parser(
        "risk", help="refusals per account in the rolling hour, and suspensions"
    )
    risk.add_argument("--json", action="store_true", help="one JSON object per account")
    actions.add_parser("status", help="the conditions the abuse desk has been told about")
    actions.add_parser("test", help="send a test alert on every configured channel")
    for sub in actions.choices.values():
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, read_keys=False)
    actions = {"run": _run, "risk": _risk, "status": _status, "test": _test}
    return actions[args.action](settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(settings.log.level, decisions=False)
    service = AlertService(settings, connect(settings.redis))
    if args.once:
        report = service.sweep()
        for subject in report.sent:
            print(f"sent: {subject}")
        for failure in report.failed:
            print(f"NOT DELIVERED: {failure}")
        for problem in report.problems:
            print(f"could not check: {problem}")
        print(report.summary())
        return 1 if report.failed or report.problems else 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    client = service.client
    server = metrics.serve(
        settings.metrics.alerts_listen, lambda _: {"redis": redis_check(lambda: client)}
    )
    try:
        service.run(stop)
    finally:
        if server is not None:
            server.close()
    return 0


def _risk(settings: Settings, args: argparse.Namespace) -> int:
    client = connect(settings.redis)
    prefix = settings.redis.key_prefix
    try:
        ids = account_ids(settings)  # the [directory] sources' accounts too
    except SourceError as error:
        raise ConfigError("directory", str(error)) from None
    risks = account_risks(RiskStore(client, prefix), RedisSuspensionStore(client, prefix), ids)
    threshold = settings.alerts.risk_refusals_per_hour
    for risk in risks:
        at_risk = bool(threshold) and risk.total >= threshold
        if args.json:
            print(
                json.dumps(
                    {
                        "account": risk.account,
                        "refusals": dict(risk.refusals),
                        "total": risk.total,
                        "at_risk": at_risk,
                        "suspended": risk.suspension is not None,
                    }
                )
            )
            continue
        if not risk.total and risk.suspension is None:
            continue
        rules = ", ".join(f"{rule} {count}" for rule, count in sorted(risk.refusals.items()))
        flags = " AT RISK" if at_risk else ""
        flags += " SUSPENDED" if risk.suspension is not None else ""
        print(f"{risk.account}: {risk.total} refusal(s) in the last hour{flags}")
        if rules:
            print(f"  {rules}")
    if not args.json and not any(risk.total or risk.suspension for risk in risks):
        print(f"no refusals in the last hour among {len(risks)} account(s), none suspended")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    reported = ReportedStore(connect(settings.redis), settings.redis.key_prefix).load()
    if not reported:
        print("nothing reported is still open")
        return 0
    for key, entry in sorted(reported.items(), key=lambda item: item[1].since):
        last_sent = iso_time(entry.last_sent)
        print(f"{iso_time(entry.since)}  {entry.subject}  [{key}, last sent {last_sent}]")
    return 0


def _test(settings: Settings, args: argparse.Namespace) -> int:
    finding = Finding(
        key="test",
        kind="test",
        subject="Test alert from sendwarden",
        lines=("This is a test of the abuse desk's alert channels; nothing is wrong.",),
    )
    notifiers = notifiers_from_settings(settings.alerts)
    failures = deliver(Alert("new", finding, time.time()), notifiers)
    for failure in failures:
        print(f"NOT DELIVERED: {failure}")
    if not failures:
        channels = ", ".join(notifier.name for notifier in notifiers)
        print(f"test alert delivered ({channels})")
    return 1 if failures else 0
