"""``sendwarden account suspend|unsuspend|show ACCOUNT``: staff control of suspensions."""

from __future__ import annotations

import argparse
import getpass
from datetime import UTC, datetime
from typing import Any

from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import load_settings
from sendwarden.policy.accounts import account_named
from sendwarden.policy.suspension import Suspension
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import RedisSuspensionStore


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "account", run, help="suspend or unsuspend an account")
    actions = add_actions(parser)
    suspend = actions.add_parser(
        "suspend", help="refuse all mail from the account until unsuspended"
    )
    suspend.add_argument("account")
    suspend.add_argument(
        "--reason", default="suspended by staff", help="shown to the customer in the reply"
    )
    unsuspend = actions.add_parser("unsuspend", help="lift a suspension")
    unsuspend.add_argument("account")
    show = actions.add_parser("show", help="whether the account is suspended, and why")
    show.add_argument("account")
    for sub in (suspend, unsuspend, show):
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    account = account_named(settings, args.account)  # an unknown id is a clear error
    store = RedisSuspensionStore(connect(settings.redis), settings.redis.key_prefix)
    if args.action == "suspend":
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        store.suspend(account.id, Suspension(reason=args.reason, since=since, by=getpass.getuser()))
        print(f"account {account.id}: suspended ({args.reason})")
    elif args.action == "unsuspend":
        lifted = store.lift(account.id)
        print(f"account {account.id}: " + ("suspension lifted" if lifted else "was not suspended"))
    else:
        suspension = store.get(account.id)
        if suspension is None:
            print(f"account {account.id}: active")
        else:
            print(
                f"account {account.id}: suspended since {suspension.since} "
                f"by {suspension.by or '?'}: {suspension.reason}"
            )
    return 0
