"""``sendwarden consent import|show|verify|grant|revoke``: the consent ledger for staff.

Exit status: 0 done; 1 refused (bad rows, broken chain, no records, bad input);
2 config error; 3 consent database unavailable (see :func:`sendwarden.cli.main`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sendwarden.addresses import normalise_address
from sendwarden.cli import add_actions, add_command, add_config_argument
from sendwarden.config import Settings, load_settings
from sendwarden.consent.csvimport import ImportFileError, ImportRejected, RowError, import_csv
from sendwarden.consent.model import ConsentStore, EventKind
from sendwarden.consent.records import GRANT_METHODS, REVOKE_METHODS, RecordError, build_event
from sendwarden.consent.store import open_from_settings
from sendwarden.consent.timeline import chain_dict, chain_words, render_dict, render_text
from sendwarden.directory.explain import find_account


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "consent", run, help="consent records: import, show, verify, grant, revoke"
    )
    actions = add_actions(parser)

    importer = actions.add_parser(
        "import",
        help="import a CSV file of consent records (all rows or none)",
        description="Columns (header row): recipient, consented_at (required); kind, method, "
        "source, ip, confirmed_at, evidence, list_id. Every bad row is reported with its "
        "line number; if there is one, nothing is imported.",
    )
    importer.add_argument("file", help="CSV file (UTF-8), or - for standard input")
    importer.add_argument("--account", required=True, help="the account the records belong to")
    importer.add_argument(
        "--recorded-by", help="who recorded them (default: import:FILE by your user name)"
    )
    importer.set_defaults(run=run_import)

    show = actions.add_parser(
        "show", help="the evidence timeline for one recipient: when, where, how, revocations"
    )
    show.add_argument("recipient")
    show.add_argument("--account", help="only this account's records")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=run_show)

    verify = actions.add_parser(
        "verify", help="walk the whole hash chain; report the first edited or deleted event"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(run=run_verify)

    grant = actions.add_parser("grant", help="record that a recipient consented (staff)")
    revoke = actions.add_parser("revoke", help="record that a recipient withdrew consent (staff)")
    for sub, methods, default in ((grant, GRANT_METHODS, None), (revoke, REVOKE_METHODS, "staff")):
        sub.add_argument("recipient")
        sub.add_argument("--account", required=True)
        sub.add_argument("--list", dest="list_id", default="", help="one list (default: all mail)")
        sub.add_argument("--method", choices=methods, default=default, required=default is None)
        sub.add_argument("--at", help="when it happened, ISO 8601 (default: now)")
        sub.add_argument("--evidence", default="", help="free text or a reference")
        sub.add_argument("--source", default="", help="where: a URL, a form, a description")
    grant.add_argument("--ip", default="", help="the recipient's IP address when consenting")
    grant.add_argument("--confirmed-at", help="double opt-in: when the confirmation came back")
    grant.set_defaults(run=run_record, kind=EventKind.GRANTED)
    revoke.set_defaults(run=run_record, kind=EventKind.REVOKED)

    for sub in (importer, show, verify, grant, revoke):
        add_config_argument(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    handler: Callable[[argparse.Namespace, Settings, ConsentStore], int] = args.run
    store = open_from_settings(settings.consent)
    try:
        return handler(args, settings, store)
    finally:
        store.close()


def _fail(message: str) -> int:
    print(f"sendwarden consent: {message}", file=sys.stderr)
    return 1


def _open_input(name: str) -> tuple[BinaryIO, int | None]:
    """The file (or stdin for ``-``) and its size when known, for the progress bar."""
    if name == "-":
        return sys.stdin.buffer, None
    stream = open(name, "rb")  # noqa: SIM115 -- closed by run_import
    return stream, os.fstat(stream.fileno()).st_size


def _progress_bar(total: int | None, unit: str, desc: str) -> Any:
    """A tqdm bar on a terminal; None when stderr is a file or a pipe."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    unit_scale = unit == "B"
    return tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=desc, file=sys.stderr)


def run_import(args: argparse.Namespace, settings: Settings, store: ConsentStore) -> int:
    account = find_account(settings, args.account, listed=True).id  # a typo: no new records
    label = "standard input" if args.file == "-" else Path(args.file).name
    recorded_by = args.recorded_by or f"import:{label} by {getpass.getuser()}"
    try:
        stream, size = _open_input(args.file)
    except OSError as error:
        return _fail(f"cannot read {args.file}: {error.strerror}")
    bar = _progress_bar(size, "B", "importing")

    def on_error(error: RowError) -> None:
        if bar is not None:
            bar.write(f"{label}: {error}", file=sys.stderr)
        else:
            print(f"{label}: {error}", file=sys.stderr)

    try:
        result = import_csv(
            store,
            stream,
            account=account,
            recorded_by=recorded_by,
            now=datetime.now(UTC),
            on_error=on_error,
            progress=bar.update if bar is not None else None,
        )
    except ImportFileError as error:
        return _fail(f"{label}: {error}; nothing was imported")
    except ImportRejected as rejected:
        return _fail(f"{label}: {rejected}")
    finally:
        if bar is not None:
            bar.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    print(f"imported {result.imported} consent records for account {account} from {label}")
    return 0


def run_show(args: argparse.Namespace, settings: Settings, store: ConsentStore) -> int:
    recipient = normalise_address(args.recipient)
    history = store.history(recipient, args.account)
    chain = store.verify_events(stored.seq for stored in history) if history else None
    if args.json:
        print(json.dumps(render_dict(recipient, history, chain), indent=2, ensure_ascii=False))
    else:
        print(render_text(recipient, history, chain), end="")
    return 0 if history and (chain is None or chain.ok) else 1


def run_verify(args: argparse.Namespace, settings: Settings, store: ConsentStore) -> int:
    bar = None if args.json else _progress_bar(None, " events", "verifying")
    try:
        report = store.verify(progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(chain_dict(report), indent=2))
    else:
        print(f"Ledger chain: {chain_words(report)}")
        if report.ok and report.head_seq:
            print(f"Chain head: event #{report.head_seq} sha256 {report.head_hash}")
    return 0 if report.ok else 1


def run_record(args: argparse.Namespace, settings: Settings, store: ConsentStore) -> int:
    account = find_account(settings, args.account, listed=True).id
    now = datetime.now(UTC)
    fields = {
        "recipient": args.recipient,
        "occurred_at": args.at or now.isoformat(),
        "kind": args.kind.value,
        "method": args.method,
        "source": args.source,
        "evidence": args.evidence,
        "list_id": args.list_id,
        "ip": getattr(args, "ip", ""),
        "confirmed_at": getattr(args, "confirmed_at", None) or "",
    }
    try:
        event = build_event(
            fields, account=account, recorded_by=f"staff:{getpass.getuser()}", now=now
        )
    except RecordError as error:
        return _fail(str(error))
    store.append([event])
    scope = f" (list {event.list_id})" if event.list_id else ""
    print(f"recorded: {event.recipient} {event.kind.value} for account {account}{scope}")
    return 0
