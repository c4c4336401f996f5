"""``sendwarden milter -c FILE``: run the milter in the foreground."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import load_settings
from sendwarden.decisionlog import configure_logging


def register(subparsers: Any) -> None:
    add_command(
        subparsers,
        "milter",
        run,
        config=True,
        help="run the milter in the foreground (SIGHUP reloads, SIGTERM stops)",
    )


def run(args: argparse.Namespace) -> int:
    from sendwarden.directory.build import start_early, start_early_from

    # The directory's first read starts now, while the rest of the config is checked
    # and the rest of the milter starts (taken over only if the whole config agrees).
    start_early_from(args.config)
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.decisions)
    start_early(settings.directory)  # (if the section alone could not start it)
    # libmilter is imported only when needed
    from sendwarden.milter.server import MilterServer, SocketInUse

    try:
        return MilterServer(args.config, settings).serve()
    except SocketInUse as error:
        print(f"sendwarden: not started: {error}", file=sys.stderr)
        return 1
