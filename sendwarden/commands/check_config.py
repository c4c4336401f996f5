"""``sendwarden check-config -c FILE``: validate a config, naming the bad key."""

from __future__ import annotations

import argparse
from typing import Any

from sendwarden.cli import add_config_argument
from sendwarden.config import load_settings


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config", help="validate a config file; exits non-zero naming the bad key"
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)  # ConfigError -> one line, exit 2 (cli.main)
    accounts = len(settings.accounts)
    print(f"{args.config}: OK ({accounts} accounts, milter socket {settings.milter.socket})")
    return 0
