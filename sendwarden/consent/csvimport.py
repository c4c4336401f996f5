"""``sendwarden consent import``: a CSV file of consent records into the ledger.

All or nothing: the file streams into one transaction; if any row is bad, every bad
row is reported with its line number and nothing is recorded. Memory stays bounded
for a million rows (rows are validated and inserted as they are read).

Columns (header row required, any order, names case-insensitive):

    recipient      required  the address (domain is normalised: lower case, IDNA)
    consented_at   required  when it happened, ISO 8601 (no offset = UTC);
                             may be spelled occurred_at
    kind                     granted (default), revoked or refused
    method                   granted: single-opt-in, double-opt-in, import (default),
                             in-person; revoked: unsubscribe-link, one-click, reply,
                             complaint, staff, import
    source                   where: signup page URL, form name, or a description
    ip                       the recipient's IP address when consenting
    confirmed_at             double opt-in: when the confirmation came back (required
                             for double-opt-in)
    evidence                 free text, e.g. the confirmation Message-ID
    list_id                  a list of the account; empty = all its mail
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from sendwarden.consent.model import ConsentStore, NewEvent
from sendwarden.consent.records import ALIASES, FIELDS, REQUIRED, RecordError, build_event

PROGRESS_EVERY = 1 << 20  # report progress per MiB read, not per line
KEPT_ERRORS = 1000  # ImportRejected keeps the first ones; on_error sees every one


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (columns, encoding); nothing was read in."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportRejected(Exception):
    """Some rows were bad, so nothing was imported."""

    bad_rows: int
    rows_read: int
    first_errors: list[RowError] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.bad_rows} of {self.rows_read} rows are bad; nothing was imported "
            "(fix them and import the whole file again)"
        )


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int


def _header_columns(raw: list[str]) -> list[str]:
    columns = [ALIASES.get(name.strip().lower(), name.strip().lower()) for name in raw]
    for index, name in enumerate(columns):
        if name not in FIELDS:
            raise ImportFileError(
                f"line 1: unknown column {raw[index].strip()!r} "
                f"(the columns are: {', '.join(FIELDS)}; consented_at may be spelled occurred_at)"
            )
        if name in columns[:index]:
            raise ImportFileError(f"line 1: column {raw[index].strip()!r} appears twice")
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        shown = ["consented_at" if name == "occurred_at" else name for name in missing]
        raise ImportFileError(f"line 1: required column missing: {', '.join(shown)}")
    return columns


class _Lines:
    """Decodes the file line by line, so a byte that is not UTF-8 is reported with its
    line and position instead of failing the whole read."""

    def __init__(self, stream: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self.stream = stream
        self.progress = progress
        self.bad_lines: dict[int, str] = {}
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        pending = 0
        for raw in self.stream:
            self.number += 1
            pending += len(raw)
            if self.progress is not None and pending >= PROGRESS_EVERY:
                self.progress(pending)
                pending = 0
            if self.number == 1:
                if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise ImportFileError("the file is UTF-16; save it as UTF-8 (CSV UTF-8)")
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                self.bad_lines[self.number] = (
                    f"not UTF-8 text (byte 0x{raw[error.start]:02X} at byte {error.start + 1} "
                    "of the line); save the file as UTF-8"
                )
                yield raw.decode("utf-8", errors="replace")
        if self.progress is not None and pending:
            self.progress(pending)


def read_events(
    stream: BinaryIO,
    *,
    account: str,
    recorded_by: str,
    now: datetime,
    on_error: Callable[[RowError], None],
    progress: Callable[[int], None] | None = None,
) -> Iterator[NewEvent]:
    """Valid events from a CSV stream, in file order. Bad rows go to ``on_error``; once
    one is seen no more events are yielded, the rest of the file is still checked, and
    ImportRejected is raised at the end (inside the store's transaction: rollback)."""
    lines = _Lines(stream, progress)
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise ImportFileError(f"line 1: the header is not valid CSV ({error})") from None
    if header is None:
        raise ImportFileError(
            "the file is empty (expected a header row, e.g. recipient,consented_at)"
        )
    if 1 in lines.bad_lines:
        raise ImportFileError(f"line 1: {lines.bad_lines[1]}")
    columns = _header_columns(header)
    bad = rows = 0
    kept: list[RowError] = []

    def report(line: int, reason: str) -> None:
        nonlocal bad
        bad += 1
        error = RowError(line, reason)
        if len(kept) < KEPT_ERRORS:
            kept.append(error)
        on_error(error)

    while True:
        first_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows += 1
            report(first_line, f"not valid CSV ({error})")
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line
        rows += 1
        if lines.bad_lines:
            problems = [lines.bad_lines.get(n) for n in range(first_line, reader.line_num + 1)]
            encoding_problem = next((problem for problem in problems if problem), None)
            if encoding_problem is not None:
                report(first_line, encoding_problem)
                continue
        if len(record) != len(columns):
            report(
                first_line, f"expected {len(columns)} fields like the header, found {len(record)}"
            )
            continue
        try:
            event = build_event(
                dict(zip(columns, record, strict=True)),
                account=account,
                recorded_by=recorded_by,
                now=now,
            )
        except RecordError as error:
            report(first_line, str(error))
            continue
        if not bad:
            yield event
    if bad:
        raise ImportRejected(bad, rows, kept)


def import_csv(
    store: ConsentStore,
    stream: BinaryIO,
    *,
    account: str,
    recorded_by: str,
    now: datetime,
    on_error: Callable[[RowError], None],
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a whole file in one transaction; ImportRejected / ImportFileError if not."""
    events: Iterable[NewEvent] = read_events(
        stream,
        account=account,
        recorded_by=recorded_by,
        now=now,
        on_error=on_error,
        progress=progress,
    )
    return ImportResult(store.append(events))
