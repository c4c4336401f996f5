"""The hash chain of the consent ledger, and what an event history means. PURE: no I/O.

Every stored event carries ``prev_hash`` (the hash of the event before it in one
global sequence) and its own ``hash``: SHA-256 over a canonical serialisation of
its fields, its sequence number and ``prev_hash``. Editing a row changes its
hash; deleting a row breaks the link of the next one; deleting the newest rows
disagrees with the chain head the store keeps. The serialisation is independent
of the database, so an auditor can recompute it from an export:

    sha256(utf8(json([
        "sendwarden-consent-v1", seq, prev_hash, account, recipient, list_id, kind,
        occurred_at, confirmed_at or null, recorded_at, recorded_by,
        method, source, ip, evidence
    ])))

with JSON as ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` and
every time as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from sendwarden.consent.model import ChainReport, EventKind, NewEvent, StoredEvent

HASH_VERSION = "sendwarden-consent-v1"
GENESIS_HASH = "0" * 64  # prev_hash of the first event

_quote: Callable[[str], str] = json.encoder.encode_basestring  # C-accelerated when available
_VERSION_JSON = _quote(HASH_VERSION)


@functools.lru_cache(maxsize=4096)  # one recorded_at per batch; imports repeat dates
def canonical_time(moment: datetime) -> str:
    """A time as the ledger hashes and SQLite stores it: UTC, microseconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; the ledger needs aware UTC times")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def parse_canonical_time(text: str) -> datetime:
    """The inverse of :func:`canonical_time`."""
    return datetime.fromisoformat(text)


Content = tuple[str | None, ...]


def event_content(event: NewEvent, recorded_at: datetime) -> Content:
    """The sealed fields, in hash order, times canonical. The order is also the
    stored column order, so a database row is hashed without being decoded."""
    return (
        event.account,
        event.recipient,
        event.list_id,
        event.kind.value,
        canonical_time(event.occurred_at),
        canonical_time(event.confirmed_at) if event.confirmed_at else None,
        canonical_time(recorded_at),
        event.recorded_by,
        event.method,
        event.source,
        event.ip,
        event.evidence,
    )


def content_hash(seq: int, prev_hash: str, content: Content) -> str:
    """The hash that seals one event into the chain (see the module docstring).

    The JSON array is assembled from JSON-escaped strings: byte for byte what
    ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes (a test
    pins it), at a third of the cost, which counts for million-row imports."""
    fields = ",".join("null" if value is None else _quote(value) for value in content)
    payload = f"[{_VERSION_JSON},{int(seq)},{_quote(prev_hash)},{fields}]"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def event_hash(seq: int, prev_hash: str, event: NewEvent, recorded_at: datetime) -> str:
    return content_hash(seq, prev_hash, event_content(event, recorded_at))


def seal(seq: int, prev_hash: str, event: NewEvent, recorded_at: datetime) -> StoredEvent:
    """The stored form of a new event appended after ``prev_hash``."""
    return StoredEvent(
        seq, event, recorded_at, prev_hash, event_hash(seq, prev_hash, event, recorded_at)
    )


class ChainLink(NamedTuple):
    """What verification needs of a stored event: light enough for millions."""

    seq: int
    prev_hash: str
    hash: str
    content: Content

    @classmethod
    def of(cls, stored: StoredEvent) -> ChainLink:
        return cls(
            stored.seq,
            stored.prev_hash,
            stored.hash,
            event_content(stored.event, stored.recorded_at),
        )


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest event's sequence number and hash, kept by the store beside the events."""

    seq: int = 0
    hash: str = GENESIS_HASH


def _edited(link: ChainLink) -> bool:
    return content_hash(link.seq, link.prev_hash, link.content) != link.hash


def _report(
    checked: int, head: ChainHead, seq: int | None = None, problem: str = ""
) -> ChainReport:
    return ChainReport(
        ok=seq is None,
        events_checked=checked,
        first_broken_seq=seq,
        problem=problem,
        head_seq=head.seq,
        head_hash=head.hash,
    )


def _missing(first: int, last: int) -> str:
    span = f"event {first} is" if first == last else f"events {first} to {last} are"
    return f"{span} missing (deleted from the database)"


EDITED = "its contents do not match its hash (the row was edited)"
UNLINKED = "it does not link to the event before it (that row was edited or replaced)"
HEAD_MISMATCH = "the newest event does not match the recorded chain head"


def verify_chain(links: Iterable[ChainLink], head: ChainHead) -> ChainReport:
    """Walk every event in sequence order; report the first one where the chain breaks."""
    expected_seq, expected_prev, checked = 1, GENESIS_HASH, 0
    for link in links:
        checked += 1
        if link.seq != expected_seq:
            if link.seq < expected_seq:
                return _report(checked, head, link.seq, "sequence numbers out of order")
            return _report(checked, head, expected_seq, _missing(expected_seq, link.seq - 1))
        if _edited(link):
            return _report(checked, head, link.seq, EDITED)
        if link.prev_hash != expected_prev:
            return _report(checked, head, link.seq, UNLINKED)
        expected_seq, expected_prev = link.seq + 1, link.hash
    last_seq = expected_seq - 1
    if last_seq < head.seq:
        return _report(checked, head, expected_seq, _missing(expected_seq, head.seq))
    if last_seq > head.seq:
        return _report(
            checked, head, head.seq + 1, "events after the recorded chain head (inserted directly)"
        )
    if expected_prev != head.hash:
        return _report(checked, head, last_seq, HEAD_MISMATCH)
    return _report(checked, head)


def neighbour_seqs(seqs: Iterable[int], head: ChainHead) -> set[int]:
    """The events :func:`verify_links` needs: each target and the ones either side."""
    wanted: set[int] = set()
    for seq in seqs:
        wanted.update(s for s in (seq - 1, seq, seq + 1) if 1 <= s <= head.seq)
    return wanted


def verify_links(
    targets: Iterable[int], found: Mapping[int, ChainLink], head: ChainHead
) -> ChainReport:
    """Check a few events without walking the whole ledger: each target's contents, its
    neighbours' contents and both links. ``found`` holds whatever of
    :func:`neighbour_seqs` the database still has. As strong as a full walk for these
    events: a forger would have to rewrite every later event too, which a full walk
    cannot detect either."""
    checked: set[int] = set()
    for seq in sorted(set(targets)):
        if seq > head.seq:
            return _report(len(checked), head, seq, "event is after the recorded chain head")
        for near in (seq - 1, seq, seq + 1):
            if not 1 <= near <= head.seq:
                continue
            link = found.get(near)
            if link is None:
                return _report(len(checked), head, near, _missing(near, near))
            if near not in checked:
                checked.add(near)
                if _edited(link):
                    return _report(len(checked), head, near, EDITED)
        current = found[seq]
        before = found[seq - 1].hash if seq > 1 else GENESIS_HASH
        if current.prev_hash != before:
            return _report(len(checked), head, seq, UNLINKED)
        if seq < head.seq and found[seq + 1].prev_hash != current.hash:
            return _report(len(checked), head, seq + 1, UNLINKED)
        if seq == head.seq and current.hash != head.hash:
            return _report(len(checked), head, seq, HEAD_MISMATCH)
    return _report(len(checked), head)


# -- what a history means --------------------------------------------------------


def latest_key(stored: StoredEvent) -> tuple[datetime, int]:
    """Events are ordered by when they happened, then by when they were recorded: an
    old list imported today cannot undo a newer unsubscribe."""
    return stored.event.occurred_at, stored.seq


def applies_to(event: NewEvent, list_id: str) -> bool:
    """An account-wide event ('' list) covers every list of the account; a list's event
    covers only that list."""
    return event.list_id in ("", list_id)


def deciding_event(
    history: Sequence[StoredEvent], account: str, list_id: str = ""
) -> StoredEvent | None:
    """The event that decides whether ``account`` may send bulk mail for ``list_id``."""
    relevant = [
        stored
        for stored in history
        if stored.event.account == account and applies_to(stored.event, list_id)
    ]
    return max(relevant, key=latest_key, default=None)


def has_consent(history: Sequence[StoredEvent], account: str, list_id: str = "") -> bool:
    decider = deciding_event(history, account, list_id)
    return decider is not None and decider.event.kind is EventKind.GRANTED
