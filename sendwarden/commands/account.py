"""``sendwarden account suspend|unsuspend|show ACCOUNT`` and ``account which IDENTITY``:
staff control of suspensions, and what the directory says about an account."""

from __future__ import annotations

import argparse
import getpass
from datetime import UTC, datetime
from typing import Any

from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import ConfigError, load_settings
from sendwarden.directory import explain
from sendwarden.directory.explain import open_directory
from sendwarden.directory.sources import SourceError
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
    show = actions.add_parser(
        "show", help="where the account comes from, what it owns, and whether it is suspended"
    )
    show.add_argument("account")
    which = actions.add_parser(
        "which", help="which account an address, login, uid or IP address is attributed to"
    )
    which.add_argument("identity", metavar="ADDRESS|LOGIN|UID|IP")
    for sub in (suspend, unsuspend, show, which):
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        with open_directory(settings) as directory:
            if args.action == "which":
                print("\n".join(explain.which(directory, args.identity)))
                return 0
            account = explain.named_account(directory, args.account)  # unknown: an error
            if args.action == "show":
                print("\n".join(explain.show_account(directory, account)))
    except SourceError as error:
        raise ConfigError("directory", str(error)) from None
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
            print("  status: active")
        else:
            print(
                f"  status: suspended since {suspension.since} "
                f"by {suspension.by or '?'}: {suspension.reason}"
            )
    return 0
