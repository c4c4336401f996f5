"""``sendwarden dkim keygen DOMAIN --selector S``: write a signing key and print the
DNS TXT record to publish; ``sendwarden dkim records -c FILE``: the records of every
configured key, to check against DNS."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sendwarden.addresses import normalise_domain
from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import load_settings
from sendwarden.dkim.keys import KeyFileError, check_selector, generate_key, public_key_record

DEFAULT_KEY_DIR = "/etc/sendwarden/dkim"
TXT_STRING_LIMIT = 255  # one DNS character-string; longer records are split


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "dkim", run, help="DKIM keys: generate one, print DNS records")
    actions = add_actions(parser)
    keygen = actions.add_parser(
        "keygen", help="write a new 2048-bit RSA key (mode 0600) and print its DNS TXT record"
    )
    keygen.add_argument("domain", help="the signing domain (d=), e.g. acme.example")
    keygen.add_argument("--selector", required=True, help="the selector (s=), e.g. 2025a")
    keygen.add_argument(
        "--key-file",
        help=f"where to write the key (default {DEFAULT_KEY_DIR}/DOMAIN.SELECTOR.key)",
    )
    keygen.add_argument(
        "--owner",
        help="the user the milter runs as (postfix with the shipped systemd unit): "
        "the key file becomes theirs, still mode 0600",
    )
    records = actions.add_parser(
        "records", help="print the DNS TXT record of every key in the config"
    )
    add_config_argument(records)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "keygen":
            return _keygen(args)
        return _records(args)
    except (KeyFileError, ValueError) as error:
        print(f"sendwarden dkim: {error}", file=sys.stderr)
        return 2


def _keygen(args: argparse.Namespace) -> int:
    domain = normalise_domain(args.domain)
    selector = check_selector(args.selector)
    key_file = args.key_file or f"{DEFAULT_KEY_DIR}/{domain}.{selector}.key"
    pem = generate_key(key_file, owner=args.owner)
    owner = f", owner {args.owner}" if args.owner else ""
    print(f"; private key written to {key_file} (mode 0600{owner})")
    print(f"; publish this TXT record in the DNS zone of {domain}:")
    print(zone_line(domain, selector, public_key_record(pem)))
    print("; then add to the sendwarden config and reload (SIGHUP):")
    print(f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{key_file}"')
    return 0


def _records(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)  # an unreadable key is a config error (exit 2)
    if not settings.dkim:
        print(f"; {args.config} configures no [[dkim]] keys")
    for entry in settings.dkim:
        print(zone_line(entry.domain, entry.selector, public_key_record(entry.key_file.pem)))
    return 0


def zone_line(domain: str, selector: str, record: str) -> str:
    """A zone-file line; the record split into 255-character strings, as DNS requires."""
    size = TXT_STRING_LIMIT
    parts = [record[start : start + size] for start in range(0, len(record), size)]
    strings = " ".join(f'"{part}"' for part in parts)
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"
