"""``sendwarden api token create --account ID | --staff``: mint an API token.

The token is printed once, with the ``[[api.tokens]]`` lines to paste into the
config; only its SHA-256 goes there, so a leaked config file grants nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from sendwarden.cli import DEFAULT_CONFIG, add_actions
from sendwarden.config import load_settings
from sendwarden.consent.api import hash_token, mint_token


def register_under(actions: Any) -> None:
    """Add ``token create`` under the ``api`` command's sub-actions."""
    token: argparse.ArgumentParser = actions.add_parser("token", help="manage API tokens")
    token_actions = add_actions(token, dest="token_action")
    create = token_actions.add_parser(
        "create", help="mint a token; prints it once with the config lines to add"
    )
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--account", help="an account token: records this account's consent")
    owner.add_argument(
        "--staff", action="store_true", help="a staff token: reads every record, writes none"
    )
    create.add_argument("--name", help="a name for logs and records (default: account or 'staff')")
    # SUPPRESS: `sendwarden api -c FILE token create` keeps the -c given to `api`.
    create.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help=f"TOML config file (default {DEFAULT_CONFIG})",
    )
    create.set_defaults(handler=run_create)


def toml_string(text: str) -> str:
    """A TOML basic string (the JSON escapes are valid TOML)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def config_lines(name: str, digest: str, account: str | None) -> str:
    owner = f"account = {toml_string(account)}" if account else 'role = "staff"'
    return f'[[api.tokens]]\nname = {toml_string(name)}\n{owner}\nsha256 = "{digest}"\n'


def run_create(args: argparse.Namespace) -> int:
    account: str | None = args.account
    if account is not None:
        # A token for an account that does not exist would record consent for nobody,
        # and the server would refuse the config it was pasted into. The account may be
        # one only the [directory] sources know: they are read now.
        from sendwarden.directory.explain import find_account

        find_account(load_settings(args.config, read_keys=False), account, listed=True)
    name = args.name or account or "staff"
    token = mint_token()
    print("New API token (shown only now; give it to whoever calls the API, keep no copy):")
    print(f"  {token}")
    print()
    print("Add these lines to the config and restart `sendwarden api`:")
    print()
    print(config_lines(name, hash_token(token), account), end="")
    return 0
