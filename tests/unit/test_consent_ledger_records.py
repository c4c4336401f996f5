"""Validating a consent record (a CSV row, a staff grant) before it enters the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sendwarden.consent.model import EventKind
from sendwarden.consent.records import RecordError, build_event

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def build(**fields: str):  # type: ignore[no-untyped-def]
    record = {"recipient": "alice@example.org", "occurred_at": "2026-03-01T10:15:02Z"}
    record.update(fields)
    return build_event(record, account="acme", recorded_by="import:list.csv", now=NOW)


def test_a_minimal_record() -> None:
    event = build()
    assert event.kind is EventKind.GRANTED
    assert event.method == "import", "no method given: the customer imported it"
    assert event.occurred_at == datetime(2026, 3, 1, 10, 15, 2, tzinfo=UTC)
    assert (event.account, event.recorded_by) == ("acme", "import:list.csv")


def test_a_full_double_opt_in_record() -> None:
    event = build(
        method="Double-Opt-In",
        source=" https://acme.example/signup ",
        ip="2001:DB8::7",
        confirmed_at="2026-03-01 12:17:44+02:00",
        evidence="Message-ID <c1@acme.example>",
        list_id="news",
    )
    assert event.method == "double-opt-in"
    assert event.source == "https://acme.example/signup"
    assert event.ip == "2001:db8::7"
    assert event.confirmed_at == datetime(2026, 3, 1, 10, 17, 44, tzinfo=UTC)
    assert event.list_id == "news"


def test_the_domain_is_normalised_once_and_the_local_part_kept() -> None:
    assert build(recipient=" Alice@Bücher.EXAMPLE ").recipient == "Alice@xn--bcher-kva.example"


def test_a_time_without_offset_is_utc_and_a_date_is_midnight() -> None:
    assert build(occurred_at="2026-03-01 10:15").occurred_at == datetime(
        2026, 3, 1, 10, 15, tzinfo=UTC
    )
    assert build(occurred_at="2026-03-01").occurred_at == datetime(2026, 3, 1, tzinfo=UTC)


def test_a_revocation() -> None:
    event = build(kind="REVOKED", method="unsubscribe-link")
    assert event.kind is EventKind.REVOKED and event.method == "unsubscribe-link"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"recipient": ""}, "recipient is empty"),
        ({"recipient": "alice"}, "not an email address"),
        ({"recipient": "alice@"}, "not an email address"),
        ({"recipient": "@example.org"}, "not an email address"),
        ({"recipient": "al ice@example.org"}, "not an email address"),
        ({"recipient": "alice@exa mple.org"}, "not an email address"),
        ({"recipient": "alice@[192.0.2.1]"}, "address literal"),
        ({"occurred_at": ""}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "not a valid ISO 8601 time"),
        ({"occurred_at": "2026-13-01"}, "not a valid ISO 8601 time"),
        ({"occurred_at": "2026-02-30"}, "not a valid ISO 8601 time"),
        ({"occurred_at": "2027-01-01"}, "in the future"),
        ({"occurred_at": "1970-01-01"}, "before 1990"),
        ({"kind": "maybe"}, "kind 'maybe' is not one of granted, revoked, refused"),
        ({"method": "purchased-list"}, "method 'purchased-list' is not a way"),
        ({"kind": "revoked", "method": "double-opt-in"}, "not a way to record revoked"),
        ({"method": "double-opt-in"}, "double-opt-in needs confirmed_at"),
        (
            {"method": "double-opt-in", "confirmed_at": "2026-03-01T10:00:00Z"},
            "confirmed_at is before occurred_at",
        ),
        ({"kind": "revoked", "confirmed_at": "2026-03-02"}, "only belongs to a granted"),
        ({"ip": "198.51.100.300"}, "not an IP address"),
    ],
)
def test_bad_records_say_why(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(RecordError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        build(**fields)


@pytest.mark.parametrize(
    "written", ["Acme News <news.acme.example>", "NEWS.acme.example", " news.acme.example "]
)
def test_list_id_is_stored_in_the_form_the_milter_compares(written: str) -> None:
    assert build(list_id=written).list_id == "news.acme.example"
