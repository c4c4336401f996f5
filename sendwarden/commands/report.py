"""``sendwarden report -c FILE``: what monitor-only mode would have refused, per
account and rule, in the last day (from the counts the milters keep in Redis)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import load_settings
from sendwarden.monitoring import MonitorStore
from sendwarden.store.redis import connect


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "report",
        run,
        config=True,
        help="what monitor-only mode would have refused, per account and rule",
    )
    parser.add_argument("--hours", type=int, default=24, help="how far back (default: 24)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.hours < 1 or args.hours > 48:
        print("--hours: from 1 to 48 (counts are kept for two days)")
        return 2
    store = MonitorStore(connect(settings.redis), settings.redis.key_prefix)
    counts = store.summary(args.hours)
    if args.json:
        for count in counts:
            print(json.dumps({"account": count.account, "rule": count.rule, "count": count.count}))
        return 0
    if not counts:
        print(f"monitor-only mode would have refused nothing in the last {args.hours} hour(s)")
        return 0
    print(f"would have been refused in the last {args.hours} hour(s), by account and rule:")
    by_account: dict[str, list[tuple[str, int]]] = {}
    for count in counts:
        by_account.setdefault(count.account, []).append((count.rule, count.count))
    for account, rules in sorted(by_account.items(), key=lambda item: -sum(n for _, n in item[1])):
        total = sum(n for _, n in rules)
        print(f"{account}: {total}")
        for rule, number in rules:
            print(f"  {rule:20} {number}")
    return 0
