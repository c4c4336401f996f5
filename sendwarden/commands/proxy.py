"""``sendwarden proxy -c FILE``: run the SMTP policy proxy in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sendwarden.cli import add_command
from sendwarden.config import load_settings
from sendwarden.decisionlog import configure_logging

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    add_command(
        subparsers,
        "proxy",
        run,
        config=True,
        help="run the SMTP policy proxy (Exim, Postfix smtpd_proxy_filter) in the foreground "
        "(SIGHUP reloads, SIGTERM stops)",
    )


def run(args: argparse.Namespace) -> int:
    from sendwarden.directory.build import start_early, start_early_from

    # The directory's first read starts now, while the rest of the config is checked
    # and the rest of the proxy starts (taken over only if the whole config agrees).
    start_early_from(args.config)
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.decisions)
    start_early(settings.directory)  # (if the section alone could not start it)
    import uvloop  # libuv's event loop, in C: less CPU per message than asyncio's

    from sendwarden.proxy.server import serve  # imports aiosmtpd only when needed

    try:
        uvloop.run(serve(settings, config_path=args.config))
    except (OSError, ValueError) as error:
        print(f"sendwarden proxy: {error}", file=sys.stderr)
        return 1
    return 0
