"""The consent ledger's vocabulary and the interface every backend implements.

Consent is a history of append-only events per (account, recipient, list):
nothing is updated or deleted; the latest event decides. Each stored event
carries the hash of the one before it, so an edited or deleted row shows up in
``sendwarden consent verify``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sendwarden.consent.ledger import ChainHead


class EventKind(StrEnum):
    GRANTED = "granted"
    REVOKED = "revoked"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a caller records; the store adds sequence, recorded time and hashes."""

    account: str
    recipient: str  # normalised with sendwarden.addresses.normalise_address
    kind: EventKind
    occurred_at: datetime  # when the recipient consented / revoked (UTC, aware)
    recorded_by: str  # who recorded it: import file, api token name, staff user
    list_id: str = ""  # '' = the account's mail in general
    method: str = ""  # granted: single-opt-in, double-opt-in, import, in-person;
    #                   revoked: unsubscribe-link, one-click, reply, complaint, staff
    source: str = ""  # where: signup URL, form name, or a description
    ip: str = ""  # the recipient's IP when consenting, if known
    confirmed_at: datetime | None = None  # double opt-in confirmation time
    evidence: str = ""  # free text or a reference, e.g. the confirmation Message-ID


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: NewEvent
    recorded_at: datetime
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of verifying the hash chain: ok, or the first event where it breaks."""

    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    problem: str = ""
    head_seq: int = 0  # the chain head the store records: newest event's seq and hash,
    head_hash: str = ""  # worth noting down elsewhere (a later rewrite cannot match it)


class ConsentStore(Protocol):
    """Backends (SQLite, PostgreSQL) raise sendwarden.store.StoreError on failure."""

    def append(self, events: Iterable[NewEvent]) -> int:
        """Append events in one transaction (all or nothing); returns how many."""
        ...

    def head(self) -> ChainHead:
        """The newest event's sequence number (the ledger's size) and hash."""
        ...

    def history(self, recipient: str, account: str | None = None) -> list[StoredEvent]:
        """Every event for a recipient (optionally one account's), oldest first."""
        ...

    def consenting(self, account: str, recipients: Sequence[str], list_id: str = "") -> set[str]:
        """The recipients whose latest event from this account (for this list, or
        account-wide) is GRANTED. One batched query, never one per recipient.

        "Latest" is by ``occurred_at``, then by recording order, so an old list
        imported today cannot undo a newer unsubscribe. Recipients are matched in
        normalised form; the returned set holds them as the caller spelled them."""
        ...

    def verify(self, progress: Callable[[int], None] | None = None) -> ChainReport:
        """Walk the whole chain; the first event where it breaks. ``progress(n)`` is
        called as events are checked (for a progress bar)."""
        ...

    def verify_events(self, seqs: Iterable[int]) -> ChainReport:
        """Check only these events, their neighbours and the links between them: fast
        enough to run with every ``consent show``."""
        ...

    def close(self) -> None: ...
