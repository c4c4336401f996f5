"""``sendwarden dnsbl check [ADDRESS ...]``: look the provider's sending addresses up in
the configured DNSBLs once, now, e.g. after a delisting request or to try a resolver."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

from sendwarden.alerts.dnsbl import (
    DnsblAnswer,
    checker_from_settings,
    monitored_addresses,
)
from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import MAX_MONITORED_ADDRESSES, IPNetwork, load_settings

EXIT_CLEAR = 0
EXIT_LISTED = 1
EXIT_USAGE = 2
EXIT_LOOKUPS_FAILED = 4


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "dnsbl", run, help="look the provider's sending addresses up in DNSBLs"
    )
    actions = add_actions(parser)
    check = actions.add_parser(
        "check",
        help="look up alerts.monitored_networks (or the ADDRESSes) in every alerts.dnsbl_zones",
        description=(
            "Exit status: 0 nothing listed, 1 something listed, "
            "4 nothing listed but some lookups failed, 2 bad usage or config."
        ),
    )
    check.add_argument(
        "addresses",
        nargs="*",
        metavar="ADDRESS",
        help="an IP address or CIDR network to check instead of alerts.monitored_networks",
    )
    check.add_argument("--json", action="store_true", help="print the answers as a JSON list")
    add_config_argument(check)


def run(args: argparse.Namespace) -> int:
    try:
        given = parse_networks(args.addresses)
    except ValueError as error:
        print(f"sendwarden: {error}", file=sys.stderr)
        return EXIT_USAGE
    alerts = load_settings(args.config, read_keys=False).alerts
    addresses = monitored_addresses(given or alerts.monitored_networks)
    if not addresses:
        print(
            "sendwarden: no addresses to check: set alerts.monitored_networks "
            "or give addresses on the command line",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not alerts.dnsbl_zones:
        print("sendwarden: no DNSBL zones to ask: alerts.dnsbl_zones is empty", file=sys.stderr)
        return EXIT_USAGE
    answers = checker_from_settings(alerts).check(addresses)
    if args.json:
        print(json.dumps([dataclasses.asdict(answer) for answer in answers], indent=2))
    else:
        print_report(answers, len(addresses), len(alerts.dnsbl_zones))
    return exit_status(answers)


def parse_networks(texts: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Addresses and networks from the command line; ValueError names a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
    total = sum(network.num_addresses for network in networks)
    if total > MAX_MONITORED_ADDRESSES:
        raise ValueError(f"{total} addresses given; check at most {MAX_MONITORED_ADDRESSES}")
    return tuple(networks)


def print_report(answers: Sequence[DnsblAnswer], addresses: int, zones: int) -> None:
    for answer in answers:
        line = describe(answer)
        if line:
            print(line)
    listings = sum(answer.status == "listed" for answer in answers)
    failures = sum(answer.status in ("refused", "error") for answer in answers)
    print(
        f"{_count(addresses, 'address', 'addresses')} checked in {_count(zones, 'zone')}: "
        f"{_count(listings, 'listing')}, {_count(failures, 'failed lookup')}"
    )


def describe(answer: DnsblAnswer) -> str:
    """One line for a listing or a failed lookup; "" for a clear answer."""
    where = f"{answer.address} on {answer.zone}"
    if answer.status == "listed":
        parts = [", ".join(answer.codes), answer.detail, answer.reason]
        return f"LISTED   {where}: " + " | ".join(part for part in parts if part)
    if answer.status == "refused":
        return f"REFUSED  {where}: {answer.detail}"
    if answer.status == "error":
        return f"FAILED   {where}: {answer.detail}"
    return ""


def exit_status(answers: Sequence[DnsblAnswer]) -> int:
    if any(answer.status == "listed" for answer in answers):
        return EXIT_LISTED
    if any(answer.status in ("refused", "error") for answer in answers):
        return EXIT_LOOKUPS_FAILED
    return EXIT_CLEAR


def _count(number: int, singular: str, plural: str = "") -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"
