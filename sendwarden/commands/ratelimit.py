"""``sendwarden ratelimit status|reset ACCOUNT``: what the recipient limit sees, and
a way to clear it (e.g. after a compromised account was cleaned up)."""

from __future__ import annotations

import argparse
from typing import Any

from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import load_settings
from sendwarden.directory.explain import find_account
from sendwarden.policy.ratelimit import describe_moment, describe_period
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import suspension_store_from_settings


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "ratelimit", run, help="show or reset an account's recipients per hour"
    )
    actions = add_actions(parser)
    status = actions.add_parser(
        "status", help="recipients used in the rolling hour, the limit, when capacity frees up"
    )
    status.add_argument("account")
    reset = actions.add_parser(
        "reset", help="forget the account's counted recipients and strikes (not a suspension)"
    )
    reset.add_argument("account")
    for sub in (status, reset):
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    account = find_account(settings, args.account)  # an unknown id is a clear error
    client = connect(settings.redis)
    counter = counter_from_settings(settings, client)
    if args.action == "reset":
        counter.reset(account.id)
        print(f"account {account.id}: recipient count and strikes reset")
        return 0
    limit = settings.recipients_per_hour(account)
    usage = counter.usage(account.id)
    print(f"account {account.id}: {usage.used} of {limit} recipients used in the last hour")
    if usage.next_free_at is not None and usage.all_free_at is not None:
        print(f"  capacity frees up from {describe_moment(usage.next_free_at, usage.now)}")
        print(f"  all of it by {describe_moment(usage.all_free_at, usage.now)}")
    if settings.ratelimit.suspend_after:
        period = describe_period(settings.ratelimit.suspend_period)
        print(
            f"  limit reached {usage.strikes} time(s) in the last {period}; "
            f"suspended automatically at {settings.ratelimit.suspend_after}"
        )
    suspensions = suspension_store_from_settings(settings, client)
    try:
        suspension = suspensions.get(account.id)
    finally:
        suspensions.close()
    if suspension is not None:
        print(f"  SUSPENDED since {suspension.since}: {suspension.reason}")
    return 0
