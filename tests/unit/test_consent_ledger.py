"""The consent ledger's hash chain and what a history decides: pure, no database."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.consent.ledger import (
    GENESIS_HASH,
    HASH_VERSION,
    ChainHead,
    ChainLink,
    canonical_time,
    content_hash,
    deciding_event,
    event_hash,
    has_consent,
    neighbour_seqs,
    seal,
    verify_chain,
    verify_links,
)
from sendwarden.consent.model import EventKind, NewEvent, StoredEvent

T0 = datetime(2026, 3, 1, 10, 15, 2, tzinfo=UTC)
RECORDED = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


def event(
    recipient: str = "alice@example.org",
    kind: EventKind = EventKind.GRANTED,
    at: datetime = T0,
    **fields: object,
) -> NewEvent:
    base = {"account": "acme", "recorded_by": "test", "method": "single-opt-in"}
    base.update(fields)  # type: ignore[arg-type]
    return NewEvent(recipient=recipient, kind=kind, occurred_at=at, **base)  # type: ignore[arg-type]


def chain(*events: NewEvent) -> list[StoredEvent]:
    stored: list[StoredEvent] = []
    prev = GENESIS_HASH
    for seq, new in enumerate(events, 1):
        stored.append(seal(seq, prev, new, RECORDED))
        prev = stored[-1].hash
    return stored


def links(stored: list[StoredEvent]) -> list[ChainLink]:
    return [ChainLink.of(s) for s in stored]


def head_of(stored: list[StoredEvent]) -> ChainHead:
    return ChainHead(stored[-1].seq, stored[-1].hash) if stored else ChainHead()


FIVE = [event(f"user{n}@example.org") for n in range(1, 6)]


def test_hash_format_is_stable() -> None:
    """Existing ledgers depend on this exact serialisation: it must never drift."""
    new = event(
        "alice@example.org",
        method="double-opt-in",
        source="https://acme.example/signup",
        ip="198.51.100.7",
        confirmed_at=T0 + timedelta(minutes=2),
        evidence="Message-ID <c1@acme.example>",
    )
    documented = (
        '["sendwarden-consent-v1",1,"' + GENESIS_HASH + '","acme","alice@example.org","",'
        '"granted","2026-03-01T10:15:02.000000Z","2026-03-01T10:17:02.000000Z",'
        '"2026-03-02T09:00:00.000000Z","test","double-opt-in","https://acme.example/signup",'
        '"198.51.100.7","Message-ID <c1@acme.example>"]'
    )
    assert (
        event_hash(1, GENESIS_HASH, new, RECORDED)
        == hashlib.sha256(documented.encode()).hexdigest()
    )
    assert event_hash(1, GENESIS_HASH, new, RECORDED).startswith("22e4ac74f7a3")


@given(st.lists(st.one_of(st.none(), st.text()), min_size=12, max_size=12), st.text())
def test_the_fast_serialisation_is_exactly_json(content: list[str | None], prev: str) -> None:
    """Quotes, backslashes, control characters, non-ASCII, surrogates: same bytes."""
    documented = json.dumps(
        [HASH_VERSION, 7, prev, *content], ensure_ascii=False, separators=(",", ":")
    )
    expected = hashlib.sha256(documented.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        actual = content_hash(7, prev, tuple(content))
    except UnicodeEncodeError:  # lone surrogates cannot be stored in the ledger anyway
        return
    assert actual == expected


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert canonical_time(plus_two) == "2026-03-01T10:15:02.000000Z"
    assert event_hash(1, GENESIS_HASH, event(at=plus_two), RECORDED) == event_hash(
        1, GENESIS_HASH, event(at=T0), RECORDED
    )


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        canonical_time(datetime(2026, 3, 1))


@pytest.mark.parametrize(
    "change",
    [
        {"account": "other"},
        {"recipient": "bob@example.org"},
        {"list_id": "news"},
        {"kind": EventKind.REVOKED},
        {"occurred_at": T0 + timedelta(microseconds=1)},
        {"confirmed_at": T0},
        {"recorded_by": "someone else"},
        {"method": "import"},
        {"source": "x"},
        {"ip": "192.0.2.1"},
        {"evidence": "x"},
    ],
)
def test_every_field_is_sealed(change: dict[str, object]) -> None:
    original = event()
    changed = dataclasses.replace(original, **change)  # type: ignore[arg-type]
    assert event_hash(1, GENESIS_HASH, original, RECORDED) != event_hash(
        1, GENESIS_HASH, changed, RECORDED
    )


def test_seq_prev_hash_and_recorded_time_are_sealed() -> None:
    reference = event_hash(1, GENESIS_HASH, event(), RECORDED)
    assert event_hash(2, GENESIS_HASH, event(), RECORDED) != reference
    assert event_hash(1, "1" * 64, event(), RECORDED) != reference
    assert event_hash(1, GENESIS_HASH, event(), RECORDED + timedelta(seconds=1)) != reference


def test_an_intact_chain_verifies() -> None:
    stored = chain(*FIVE)
    report = verify_chain(links(stored), head_of(stored))
    assert report.ok and report.events_checked == 5 and report.head_seq == 5


def test_an_empty_ledger_verifies() -> None:
    assert verify_chain(links([]), ChainHead()).ok


def test_an_edited_row_is_found() -> None:
    stored = chain(*FIVE)
    stored[2] = dataclasses.replace(
        stored[2], event=dataclasses.replace(stored[2].event, evidence="forged")
    )
    report = verify_chain(links(stored), head_of(chain(*FIVE)))
    assert not report.ok and report.first_broken_seq == 3 and "edited" in report.problem


def test_an_edited_and_rehashed_row_breaks_the_next_link() -> None:
    stored = chain(*FIVE)
    forged = dataclasses.replace(stored[2].event, kind=EventKind.REVOKED)
    stored[2] = seal(3, stored[2].prev_hash, forged, RECORDED)
    report = verify_chain(links(stored), head_of(stored))
    assert not report.ok and report.first_broken_seq == 4
    assert "does not link" in report.problem


def test_a_deleted_row_is_found() -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    del stored[1]
    report = verify_chain(links(stored), head)
    assert report.first_broken_seq == 2 and "event 2 is missing" in report.problem


def test_deleted_newest_rows_are_found_against_the_head() -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    report = verify_chain(links(stored[:3]), head)
    assert report.first_broken_seq == 4 and "events 4 to 5 are missing" in report.problem


def test_rows_inserted_behind_the_head_are_found() -> None:
    stored = chain(*FIVE)
    report = verify_chain(links(stored), ChainHead(4, stored[3].hash))
    assert report.first_broken_seq == 5 and "inserted" in report.problem


def test_a_replaced_head_is_found() -> None:
    stored = chain(*FIVE)
    report = verify_chain(links(stored), ChainHead(5, "f" * 64))
    assert report.first_broken_seq == 5 and "chain head" in report.problem


def test_neighbours_of_the_ends() -> None:
    assert neighbour_seqs([1, 5], ChainHead(5, "x")) == {1, 2, 4, 5}


def test_local_check_passes_for_an_intact_chain() -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    found = {s.seq: ChainLink.of(s) for s in stored if s.seq in neighbour_seqs([3], head)}
    report = verify_links([3], found, head)
    assert report.ok and report.events_checked == 3


@pytest.mark.parametrize("edited_seq", [2, 3, 4])
def test_local_check_finds_an_edit_of_the_event_or_a_neighbour(edited_seq: int) -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    index = edited_seq - 1
    stored[index] = dataclasses.replace(
        stored[index], event=dataclasses.replace(stored[index].event, source="forged")
    )
    found = {s.seq: ChainLink.of(s) for s in stored}
    report = verify_links([3], found, head)
    assert not report.ok and report.first_broken_seq == edited_seq


def test_local_check_finds_a_rehashed_event_by_its_successor() -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    stored[2] = seal(
        3, stored[2].prev_hash, dataclasses.replace(stored[2].event, ip="::1"), RECORDED
    )
    report = verify_links([3], {s.seq: ChainLink.of(s) for s in stored}, head)
    assert not report.ok and report.first_broken_seq == 4


def test_local_check_finds_a_deleted_neighbour() -> None:
    stored = chain(*FIVE)
    head = head_of(stored)
    found = {s.seq: ChainLink.of(s) for s in stored if s.seq != 4}
    report = verify_links([3], found, head)
    assert not report.ok and report.first_broken_seq == 4 and "missing" in report.problem


def test_local_check_of_the_newest_event_compares_the_head() -> None:
    stored = chain(*FIVE)
    report = verify_links([5], {s.seq: ChainLink.of(s) for s in stored}, ChainHead(5, "e" * 64))
    assert not report.ok and "chain head" in report.problem


# -- what a history decides ------------------------------------------------------


def test_the_latest_event_decides() -> None:
    history = chain(event(), event(kind=EventKind.REVOKED, at=T0 + timedelta(days=1)))
    assert not has_consent(history, "acme")
    history = chain(*[s.event for s in history], event(at=T0 + timedelta(days=2)))
    assert has_consent(history, "acme")


def test_an_old_grant_imported_later_does_not_undo_a_newer_unsubscribe() -> None:
    revoked = event(kind=EventKind.REVOKED, at=T0 + timedelta(days=30))
    old_grant = event(at=T0)
    history = chain(revoked, old_grant)  # recorded in that order
    decider = deciding_event(history, "acme")
    assert decider is not None and decider.event.kind is EventKind.REVOKED


def test_same_time_falls_back_to_recording_order() -> None:
    history = chain(event(), event(kind=EventKind.REVOKED))
    assert not has_consent(history, "acme")


def test_consent_belongs_to_one_account() -> None:
    history = chain(event(account="other"))
    assert has_consent(history, "other") and not has_consent(history, "acme")


def test_list_scoping() -> None:
    account_wide = chain(event())
    assert has_consent(account_wide, "acme", "news"), "an account-wide grant covers every list"
    one_list = chain(event(list_id="news"))
    assert has_consent(one_list, "acme", "news")
    assert not has_consent(one_list, "acme", "offers")
    assert not has_consent(one_list, "acme"), "a list grant is not account-wide consent"
    revoke_all = chain(
        event(list_id="news"), event(kind=EventKind.REVOKED, at=T0 + timedelta(days=1))
    )
    assert not has_consent(revoke_all, "acme", "news"), "an account-wide revocation ends all"
    revoke_one = chain(event(), event(kind=EventKind.REVOKED, at=T0 + timedelta(1), list_id="news"))
    assert not has_consent(revoke_one, "acme", "news")
    assert has_consent(revoke_one, "acme", "offers")


def test_refused_is_no_consent() -> None:
    assert not has_consent(chain(event(kind=EventKind.REFUSED)), "acme")
