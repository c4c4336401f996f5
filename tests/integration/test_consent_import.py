"""CSV import into a real ledger (SQLite and PostgreSQL): all rows or none."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from sendwarden.consent.csvimport import (
    ImportFileError,
    ImportRejected,
    RowError,
    import_csv,
)
from sendwarden.consent.model import ConsentStore, EventKind

NOW = datetime(2026, 6, 1, tzinfo=UTC)

GOOD = (
    "\ufeffRecipient,Consented_At,method,source,ip,confirmed_at,evidence,list_id,kind\r\n"
    "alice@Example.ORG,2026-03-01T10:15:02Z,double-opt-in,https://acme.example/signup,"
    "198.51.100.7,2026-03-01T10:17:44Z,Message-ID <c1@acme.example>,,\r\n"
    "\r\n"
    'bob@example.org,2026-03-02 09:00,in-person,"Trade fair, Cape Town",,,"signed card\r\n'
    'number 17",news,\r\n'
    "alice@example.org,2026-05-02T08:00:00Z,unsubscribe-link,,,,,,revoked\r\n"
)


def run_import(store: ConsentStore, text: str | bytes, errors: list[RowError] | None = None) -> int:
    data = text.encode("utf-8") if isinstance(text, str) else text
    sink: list[RowError] = [] if errors is None else errors
    return import_csv(
        store,
        io.BytesIO(data),
        account="acme",
        recorded_by="import:list.csv by test",
        now=NOW,
        on_error=sink.append,
    ).imported


def assert_nothing_imported(store: ConsentStore) -> None:
    report = store.verify()
    assert report.ok and report.head_seq == 0


def test_a_good_file(consent_store: ConsentStore) -> None:
    assert run_import(consent_store, GOOD) == 3
    alice = consent_store.history("alice@example.org", "acme")
    assert [s.event.kind for s in alice] == [EventKind.GRANTED, EventKind.REVOKED]
    grant = alice[0].event
    assert grant.method == "double-opt-in" and grant.ip == "198.51.100.7"
    assert grant.confirmed_at == datetime(2026, 3, 1, 10, 17, 44, tzinfo=UTC)
    assert grant.evidence == "Message-ID <c1@acme.example>"
    assert grant.recorded_by == "import:list.csv by test"
    (bob,) = consent_store.history("bob@example.org")
    assert bob.event.source == "Trade fair, Cape Town"
    assert bob.event.evidence == "signed card\r\nnumber 17"
    assert bob.event.list_id == "news"
    assert consent_store.consenting("acme", ["alice@example.org", "bob@example.org"], "news") == {
        "bob@example.org"
    }
    assert consent_store.verify().ok


def test_only_the_required_columns(consent_store: ConsentStore) -> None:
    text = "recipient,consented_at\nalice@example.org,2026-03-01\nbob@example.org,2026-03-01\n"
    assert run_import(consent_store, text) == 2
    (alice,) = consent_store.history("alice@example.org")
    assert alice.event.method == "import"


def test_bad_rows_are_all_reported_and_nothing_is_imported(consent_store: ConsentStore) -> None:
    text = (
        "recipient,consented_at,method,confirmed_at\n"  # line 1
        "good@example.org,2026-03-01,,\n"  # 2
        "not-an-address,2026-03-01,,\n"  # 3
        "good2@example.org,2026-03-01,,\n"  # 4
        "bad-time@example.org,last tuesday,,\n"  # 5
        "short@example.org,2026-03-01\n"  # 6
        '"multi\nline@example.org",2026-03-01,,\n'  # 7-8
        "bought@example.org,2026-03-01,purchased-list,\n"  # 9
        "doi@example.org,2026-03-01,double-opt-in,\n"  # 10
        "good3@example.org,2026-03-01,,\n"  # 11
    )
    errors: list[RowError] = []
    with pytest.raises(ImportRejected) as rejected:
        run_import(consent_store, text, errors)
    assert [(e.line, e.reason.split(" ")[0]) for e in errors] == [
        (3, "recipient"),
        (5, "occurred_at"),
        (6, "expected"),
        (7, "recipient"),
        (9, "method"),
        (10, "double-opt-in"),
    ]
    assert str(errors[2]) == "line 6: expected 4 fields like the header, found 2"
    assert "not an email address" in errors[0].reason
    assert "'purchased-list' is not a way to record granted consent" in errors[4].reason
    assert rejected.value.bad_rows == 6 and rejected.value.rows_read == 9
    assert "nothing was imported" in str(rejected.value)
    assert_nothing_imported(consent_store)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("recipient,consented_at,emial", "unknown column 'emial'"),
        ("recipient,method", "required column missing: consented_at"),
        ("email,consented_at", "unknown column 'email'"),
        ("recipient,consented_at,recipient", "column 'recipient' appears twice"),
        ("recipient,occurred_at,consented_at", "column 'consented_at' appears twice"),
    ],
)
def test_wrong_columns(consent_store: ConsentStore, header: str, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        run_import(consent_store, f"{header}\nalice@example.org,2026-03-01,x\n")
    assert_nothing_imported(consent_store)


def test_an_empty_file(consent_store: ConsentStore) -> None:
    with pytest.raises(ImportFileError, match="empty"):
        run_import(consent_store, b"")


def test_a_header_only_file_imports_nothing(consent_store: ConsentStore) -> None:
    assert run_import(consent_store, "recipient,consented_at\n") == 0


def test_a_non_utf8_row_is_named_by_line_and_byte(consent_store: ConsentStore) -> None:
    data = (
        b"recipient,consented_at,evidence\n"
        b"alice@example.org,2026-03-01,ok\n"
        b"bob@example.org,2026-03-01,Caf\xe9 sign-up sheet\n"
        b"carol@example.org,2026-03-01,ok\n"
    )
    errors: list[RowError] = []
    with pytest.raises(ImportRejected):
        run_import(consent_store, data, errors)
    assert [str(e) for e in errors] == [
        "line 3: not UTF-8 text (byte 0xE9 at byte 31 of the line); save the file as UTF-8"
    ]
    assert_nothing_imported(consent_store)


def test_a_non_utf8_header(consent_store: ConsentStore) -> None:
    with pytest.raises(ImportFileError, match="line 1: not UTF-8"):
        run_import(consent_store, b"recipient,consented_at,\xff\n")


def test_a_utf16_file(consent_store: ConsentStore) -> None:
    data = "recipient,consented_at\nalice@example.org,2026-03-01\n".encode("utf-16")
    with pytest.raises(ImportFileError, match="UTF-16; save it as UTF-8"):
        run_import(consent_store, data)


def test_broken_csv_quoting_is_a_bad_row(consent_store: ConsentStore) -> None:
    errors: list[RowError] = []
    with pytest.raises(ImportRejected):
        run_import(
            consent_store,
            'recipient,consented_at\nalice@example.org,2026-03-01\nbo"b@example.org,2026"x\n',
            errors,
        )
    assert [e.line for e in errors] == [3]


def test_progress_counts_every_byte(consent_store: ConsentStore) -> None:
    data = ("recipient,consented_at\n" + "user@example.org,2026-03-01\n" * 2000).encode()
    seen: list[int] = []
    import_csv(
        consent_store,
        io.BytesIO(data),
        account="acme",
        recorded_by="test",
        now=NOW,
        on_error=lambda error: None,
        progress=seen.append,
    )
    assert sum(seen) == len(data)


def test_a_bigger_file_streams_in_one_transaction(consent_store: ConsentStore) -> None:
    rows = "".join(f"user{n}@example.org,2026-03-01T00:00:{n % 60:02d}Z\n" for n in range(20_000))
    assert run_import(consent_store, "recipient,consented_at\n" + rows) == 20_000
    report = consent_store.verify()
    assert report.ok and report.events_checked == 20_000
    assert (
        len(consent_store.consenting("acme", [f"user{n}@example.org" for n in range(500)])) == 500
    )
