"""``sendwarden account suspend|unsuspend|show ACCOUNT`` and ``account which IDENTITY``:
staff control of suspensions, and what the directory says about an account.

Suspensions are recorded with their history (who, when, why; lifted by whom and
why) in the durable database (``[consent] database``) and put in effect on every
MTA host through Redis (sendwarden.store.suspensions).
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import ConfigError, load_settings
from sendwarden.directory import explain
from sendwarden.directory.explain import open_directory
from sendwarden.directory.sources import SourceError
from sendwarden.policy.suspension import Suspension
from sendwarden.store.redis import connect
from sendwarden.store.suspensions import suspension_store_from_settings, utc_now_text


def staff_member() -> str:
    """Who is running the command: the sudo caller if any, else the login user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


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
    unsuspend.add_argument("--reason", default="", help="why it is lifted (kept in the history)")
    for sub in (suspend, unsuspend):
        sub.add_argument(
            "--by",
            default=None,
            help="the staff member recorded in the history (default: the sudo caller or "
            "the login user)",
        )
    show = actions.add_parser(
        "show",
        help="where the account comes from, what it owns, whether it is suspended, and why",
    )
    show.add_argument("account")
    which = actions.add_parser(
        "which", help="which account an address, login, uid or IP address is attributed to"
    )
    which.add_argument("identity", metavar="ADDRESS|LOGIN|UID|IP")
    for sub in (suspend, unsuspend, show, which):
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, read_keys=False)
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
    client = connect(settings.redis)
    store = suspension_store_from_settings(settings, client)
    try:
        if args.action == "suspend":
            by = args.by or staff_member()
            store.suspend(account.id, Suspension(reason=args.reason, since=utc_now_text(), by=by))
            print(f"account {explain.shown(account.id)}: suspended by {by} ({args.reason})")
        elif args.action == "unsuspend":
            by = args.by or staff_member()
            lifted = store.lift(account.id, by, args.reason)
            print(
                f"account {explain.shown(account.id)}: "
                + (f"suspension lifted by {by}" if lifted else "was not suspended")
            )
        else:
            suspension = store.get(account.id)
            if suspension is None:
                print(f"account {explain.shown(account.id)}: active")
            else:
                print(
                    f"account {explain.shown(account.id)}: suspended since {suspension.since} "
                    f"by {suspension.by or '?'}: {suspension.reason}"
                )
            for event in store.history(account.id):
                why = f": {event.reason}" if event.reason else ""
                print(f"  {event.at}  {event.action} by {event.by}{why}")
    finally:
        store.close()
        client.close()
    return 0
