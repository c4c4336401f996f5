"""``sendwarden check-config -c FILE``: validate a config, naming the bad key."""

from __future__ import annotations

import argparse
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import ConfigError, load_settings
from sendwarden.directory.explain import open_directory
from sendwarden.directory.sources import SourceError


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
    accounts = f"{len(settings.accounts)} accounts"
    if settings.directory.has_sources:
        # The sources are read as the milter would read them: a bad line is named here.
        try:
            with open_directory(settings) as directory:
                snapshot = directory.snapshot
                counts = snapshot.counts() if snapshot is not None else {}
                conflicts = snapshot.conflicts() if snapshot is not None else []
        except SourceError as error:
            raise ConfigError("directory", str(error)) from None
        accounts = (
            f"{len(settings.accounts)} accounts in the config; the directory has "
            f"{counts.get('accounts', 0)} accounts, {counts.get('domains', 0)} domains, "
            f"{counts.get('logins', 0)} logins, {counts.get('uids', 0)} uids"
        )
        for conflict in conflicts:
            print(f"directory conflict: {conflict}")
    print(f"{args.config}: OK ({accounts}, milter socket {settings.milter.socket})")
    return 0
