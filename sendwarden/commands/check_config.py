"""``sendwarden check-config -c FILE``: validate a config, naming the bad key."""

from __future__ import annotations

import argparse
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import load_settings


def register(subparsers: Any) -> None:
    add_command(
        subparsers,
        "check-config",
        run,
        config=True,
        help="validate a config file; exits non-zero naming the bad key",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)  # ConfigError -> one line, exit 2 (cli.main)
    accounts = len(settings.accounts)
    print(f"{args.config}: OK ({accounts} accounts, milter socket {settings.milter.socket})")
    return 0
