"""The ``sendwarden`` command: one subcommand per module in :mod:`sendwarden.commands`.

Each command module has ``register(subparsers)``, which adds its parser and sets
``handler`` (a function of the parsed arguments returning the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sendwarden import __version__
from sendwarden.config import ConfigError
from sendwarden.store import StoreError

COMMAND_MODULES = (
    "sendwarden.commands.milter",
    "sendwarden.commands.proxy",
    "sendwarden.commands.check_config",
    "sendwarden.commands.account",
    "sendwarden.commands.dkim",
    "sendwarden.commands.ratelimit",
    "sendwarden.commands.api",
    "sendwarden.commands.consent",
    "sendwarden.commands.dnsbl",
    "sendwarden.commands.alerts",
    "sendwarden.commands.report",
)
DEFAULT_CONFIG = "/etc/sendwarden/sendwarden.toml"
Handler = Callable[[argparse.Namespace], int]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone when it names one: only its
    module is imported then (``sendwarden milter`` starts without loading the API's)."""
    parser = argparse.ArgumentParser(
        prog="sendwarden", description="Outbound mail policy milter for hosting providers."
    )
    parser.add_argument("--version", action="version", version=f"sendwarden {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    only = f"sendwarden.commands.{command.replace('-', '_')}" if command else None
    for module_name in [only] if only in COMMAND_MODULES else COMMAND_MODULES:
        importlib.import_module(str(module_name)).register(subparsers)
    return parser


def add_command(
    subparsers: Any, name: str, handler: Handler, *, config: bool = False, **options: Any
) -> argparse.ArgumentParser:
    """Add the parser of command ``name``, run by ``handler``; ``options`` as for
    ``add_parser`` (help, description). ``config``: the command itself takes ``-c``
    (a command with actions usually takes it after the action instead)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, **options)
    if config:
        add_config_argument(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_actions(
    parser: argparse.ArgumentParser, *, dest: str = "action", required: bool = True
) -> Any:
    """The ACTION sub-parsers of a command (``sendwarden account suspend``)."""
    return parser.add_subparsers(dest=dest, required=required, metavar="ACTION")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        help=f"TOML config file (default {DEFAULT_CONFIG})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words[0] if words else None).parse_args(words)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"sendwarden: config error: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        print(f"sendwarden: store unavailable: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
