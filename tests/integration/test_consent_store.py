"""The consent ledger on real databases: the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from sendwarden.consent.model import ConsentStore, EventKind, NewEvent
from sendwarden.consent.store import open_consent_store, parse_database_url
from sendwarden.store import StoreError
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, find_bindir

T0 = datetime(2026, 3, 1, 10, 15, 2, 123456, tzinfo=UTC)


def event(
    recipient: str = "alice@example.org",
    kind: EventKind = EventKind.GRANTED,
    at: datetime = T0,
    account: str = "acme",
    **fields: str,
) -> NewEvent:
    return NewEvent(
        account=account,
        recipient=recipient,
        kind=kind,
        occurred_at=at,
        recorded_by="test",
        **fields,  # type: ignore[arg-type]
    )


# -- raw SQL, as someone with database access would tamper --------------------------


@contextlib.contextmanager
def raw(url: str) -> Iterator[sqlite3.Connection | psycopg.Connection]:  # type: ignore[type-arg]
    dialect, target = parse_database_url(url)
    if dialect == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
    else:
        with psycopg.connect(target, autocommit=True) as pg:
            yield pg


def tamper(url: str, *statements: str) -> None:
    """Drop the append-only guards, then run statements straight in SQL."""
    sqlite = url.startswith("sqlite:")
    guards = (
        [
            "DROP TRIGGER IF EXISTS consent_events_no_update",
            "DROP TRIGGER IF EXISTS consent_events_no_delete",
        ]
        if sqlite
        else ["DROP TRIGGER IF EXISTS consent_events_no_change ON consent_events"]
    )
    with raw(url) as conn:
        for statement in [*guards, *statements]:
            conn.execute(statement)


# -- appending and reading -----------------------------------------------------------


def test_append_and_history(consent_store: ConsentStore) -> None:
    added = consent_store.append(
        [
            event("Alice@Example.ORG", method="double-opt-in", confirmed_at=T0 + timedelta(1)),  # type: ignore[arg-type]
            event("bob@example.org"),
            event("Alice@example.org", EventKind.REVOKED, T0 + timedelta(days=3), method="reply"),
            event("Alice@example.org", account="beta"),
        ]
    )
    assert added == 4
    history = consent_store.history("<Alice@EXAMPLE.org>")
    assert [s.event.kind for s in history] == [
        EventKind.GRANTED,
        EventKind.GRANTED,
        EventKind.REVOKED,
    ]
    first = history[0]
    assert first.seq == 1 and first.event.recipient == "Alice@example.org"
    assert first.event.occurred_at == T0, "microseconds and time zone survive the round trip"
    assert first.event.confirmed_at == T0 + timedelta(1)
    assert first.recorded_at.tzinfo is not None
    assert [s.event.account for s in consent_store.history("Alice@example.org", "beta")] == ["beta"]
    assert consent_store.history("nobody@example.org") == []


def test_history_is_in_the_order_things_happened(consent_store: ConsentStore) -> None:
    consent_store.append([event(kind=EventKind.REVOKED, at=T0 + timedelta(days=9))])
    consent_store.append([event(at=T0)])  # an old grant imported later
    assert [s.seq for s in consent_store.history("alice@example.org")] == [2, 1]


def test_unicode_survives(consent_store: ConsentStore) -> None:
    consent_store.append([event("jürgen@bücher.example", evidence="Anmeldung am Stand, Köln ✓")])
    (stored,) = consent_store.history("jürgen@BÜCHER.example")
    assert stored.event.recipient == "jürgen@xn--bcher-kva.example"
    assert stored.event.evidence == "Anmeldung am Stand, Köln ✓"
    assert consent_store.verify().ok


def test_consenting_is_batched_and_answers_in_the_callers_spelling(
    consent_store: ConsentStore,
) -> None:
    consent_store.append(
        [
            event("granted@example.org"),
            event("revoked@example.org"),
            event("revoked@example.org", EventKind.REVOKED, T0 + timedelta(hours=1)),
            event("regranted@example.org", EventKind.REVOKED),
            event("regranted@example.org", at=T0 + timedelta(hours=1)),
            event("refused@example.org", EventKind.REFUSED),
            event("other-account@example.org", account="beta"),
            event("stale@example.org", EventKind.REVOKED, T0 + timedelta(days=5)),
            event("stale@example.org", at=T0),  # recorded later, happened earlier
        ]
    )
    asked = [
        "<granted@EXAMPLE.org>",
        "granted@example.org",
        "revoked@example.org",
        "regranted@example.org",
        "refused@example.org",
        "other-account@example.org",
        "stale@example.org",
        "unknown@example.org",
        "not an address",
    ]
    assert consent_store.consenting("acme", asked) == {
        "<granted@EXAMPLE.org>",
        "granted@example.org",
        "regranted@example.org",
    }
    assert consent_store.consenting("acme", []) == set()
    assert consent_store.consenting("nobody", asked) == set()


def test_consenting_for_a_list(consent_store: ConsentStore) -> None:
    consent_store.append(
        [
            event("wide@example.org"),
            event("news@example.org", list_id="news"),
            event("left-news@example.org"),
            event("left-news@example.org", EventKind.REVOKED, T0 + timedelta(1), list_id="news"),
            event("left-all@example.org", list_id="news"),
            event("left-all@example.org", EventKind.REVOKED, T0 + timedelta(1)),
        ]
    )
    everyone = [
        "wide@example.org",
        "news@example.org",
        "left-news@example.org",
        "left-all@example.org",
    ]
    assert consent_store.consenting("acme", everyone, "news") == {
        "wide@example.org",
        "news@example.org",
    }
    assert consent_store.consenting("acme", everyone, "offers") == {
        "wide@example.org",
        "left-news@example.org",
    }
    assert consent_store.consenting("acme", everyone) == {
        "wide@example.org",
        "left-news@example.org",
    }


def test_500_recipients_in_one_call(consent_store: ConsentStore) -> None:
    recipients = [f"user{n}@example.org" for n in range(500)]
    consent_store.append(event(address) for address in recipients[::2])
    assert consent_store.consenting("acme", recipients) == set(recipients[::2])


# -- all or nothing ------------------------------------------------------------------


def test_a_failing_batch_records_nothing(consent_store: ConsentStore) -> None:
    consent_store.append([event("first@example.org")])

    def events() -> Iterator[NewEvent]:
        yield event("second@example.org")
        yield event("third@example.org")
        raise RuntimeError("the import found a bad row")

    with pytest.raises(RuntimeError):
        consent_store.append(events())
    with pytest.raises(ValueError, match="not an email address"):
        consent_store.append([event("fourth@example.org"), event("no-domain")])
    with pytest.raises(ValueError, match="time zone"):
        consent_store.append([event(at=datetime(2026, 1, 1))])
    assert consent_store.history("second@example.org") == []
    assert consent_store.history("fourth@example.org") == []
    report = consent_store.verify()
    assert report.ok and report.head_seq == 1
    assert consent_store.append([event("fifth@example.org")]) == 1
    assert consent_store.history("fifth@example.org")[0].seq == 2


def test_an_empty_batch(consent_store: ConsentStore) -> None:
    assert consent_store.append([]) == 0
    assert consent_store.verify().head_seq == 0


# -- the chain -----------------------------------------------------------------------


def seed(store: ConsentStore, count: int = 6) -> None:
    store.append(event(f"user{n}@example.org") for n in range(1, count + 1))


def test_the_chain_verifies_and_survives_reopening(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    assert consent_store.verify().ok
    seed(consent_store)
    consent_store.close()
    reopened = open_consent_store(consent_database_url)
    try:
        reopened.append([event("late@example.org")])
        report = reopened.verify()
        assert report.ok and report.events_checked == 7 and report.head_seq == 7
        assert len(report.head_hash) == 64
    finally:
        reopened.close()


def test_events_cannot_be_changed_by_accident(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    seed(consent_store)
    errors = (sqlite3.Error, psycopg.Error)
    with raw(consent_database_url) as conn:
        with pytest.raises(errors, match="append-only"):
            conn.execute("UPDATE consent_events SET kind = 'revoked' WHERE seq = 2")
        with pytest.raises(errors, match="append-only"):
            conn.execute("DELETE FROM consent_events WHERE seq = 2")
    assert consent_store.verify().ok


def test_verify_finds_an_updated_row(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    seed(consent_store)
    tamper(consent_database_url, "UPDATE consent_events SET kind = 'revoked' WHERE seq = 4")
    report = consent_store.verify()
    assert not report.ok and report.first_broken_seq == 4 and "edited" in report.problem


def test_verify_finds_a_deleted_row(consent_store: ConsentStore, consent_database_url: str) -> None:
    seed(consent_store)
    tamper(consent_database_url, "DELETE FROM consent_events WHERE seq = 3")
    report = consent_store.verify()
    assert not report.ok and report.first_broken_seq == 3 and "missing" in report.problem


def test_verify_finds_deleted_newest_rows(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    seed(consent_store)
    tamper(consent_database_url, "DELETE FROM consent_events WHERE seq >= 5")
    report = consent_store.verify()
    assert not report.ok and report.first_broken_seq == 5


def test_verify_finds_a_forged_row_with_a_recomputed_hash(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    """A forger who recomputes the row's own hash still breaks the next link."""
    from sendwarden.consent.ledger import event_hash

    seed(consent_store)
    (victim,) = consent_store.history("user3@example.org")
    forged = event("user3@example.org", EventKind.REVOKED)
    digest = event_hash(victim.seq, victim.prev_hash, forged, victim.recorded_at)
    tamper(
        consent_database_url,
        f"UPDATE consent_events SET kind = 'revoked', hash = '{digest}' WHERE seq = 3",
    )
    report = consent_store.verify()
    assert not report.ok and report.first_broken_seq == 4


def test_show_checks_a_recipients_events_quickly(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    seed(consent_store)
    seqs = [s.seq for s in consent_store.history("user3@example.org")]
    assert consent_store.verify_events(seqs).ok
    assert consent_store.verify_events(
        [s.seq for s in consent_store.history("user6@example.org")]
    ).ok
    tamper(consent_database_url, "UPDATE consent_events SET ip = '192.0.2.66' WHERE seq = 3")
    report = consent_store.verify_events(seqs)
    assert not report.ok and report.first_broken_seq == 3
    assert consent_store.verify_events(
        [s.seq for s in consent_store.history("user1@example.org")]
    ).ok, "events far from the edit still check out locally"
    tamper(consent_database_url, "DELETE FROM consent_events WHERE seq = 6")
    report = consent_store.verify_events([5])
    assert not report.ok and report.first_broken_seq == 6


def test_concurrent_writers_keep_the_chain_linear(consent_database_url: str) -> None:
    """Several hosts (separate stores) and threads appending at once."""
    stores = [open_consent_store(consent_database_url, timeout_ms=20_000) for _ in range(3)]
    failures: list[BaseException] = []

    def write(store: ConsentStore, writer: int) -> None:
        try:
            for n in range(15):
                store.append([event(f"w{writer}-{n}@example.org"), event(f"w{writer}-{n}b@x.org")])
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [
        threading.Thread(target=write, args=(stores[writer % 3], writer)) for writer in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        report = stores[0].verify()
        assert report.ok and report.events_checked == 6 * 15 * 2
    finally:
        for store in stores:
            store.close()


# -- failures become StoreError ------------------------------------------------------


@contextlib.contextmanager
def chain_locked(url: str) -> Iterator[None]:
    """Another writer holding the chain lock (a long import on another host)."""
    with raw(url) as conn:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
        else:
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM consent_chain WHERE id = 1 FOR UPDATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def test_a_busy_ledger_is_a_store_error_and_readers_do_not_wait(
    consent_database_url: str,
) -> None:
    store = open_consent_store(consent_database_url, timeout_ms=200)
    try:
        store.append([event()])
        with chain_locked(consent_database_url):
            with pytest.raises(StoreError) as raised:
                store.append([event("bob@example.org")])
            assert raised.value.backend == "consent database"
            assert store.consenting("acme", ["alice@example.org"]) == {"alice@example.org"}
        assert store.append([event("bob@example.org")]) == 1
    finally:
        store.close()


@pytest.mark.postgres
def test_an_unreachable_postgresql_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"cannot connect to 127\.0\.0\.1"):
        open_consent_store(f"postgresql://postgres@127.0.0.1:{free_port()}/consent")


@pytest.mark.postgres
def test_a_postgresql_restart_costs_one_failed_query_at_most() -> None:
    """The milter keeps its store across an outage: errors while the server is down,
    answers again as soon as it is back (the dead pooled connections are dropped)."""
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    with PostgresServer() as server:
        store = open_consent_store(server.url(), timeout_ms=2000)
        try:
            store.append([event()])
            with ThreadPoolExecutor(4) as pool:  # several pooled connections
                list(pool.map(lambda _: store.consenting("acme", ["x@example.org"]), range(8)))
            server.stop()
            with pytest.raises(StoreError):
                store.consenting("acme", ["alice@example.org"])
            server.start()
            assert store.consenting("acme", ["alice@example.org"]) == {"alice@example.org"}
        finally:
            store.close()


def test_an_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="consent database: opening"):
        open_consent_store(f"sqlite:///{tmp_path}/missing-dir/consent.db")


def test_a_closed_store_says_so(consent_store: ConsentStore) -> None:
    consent_store.close()
    with pytest.raises(StoreError, match="closed"):
        consent_store.consenting("acme", ["alice@example.org"])


# -- schema --------------------------------------------------------------------------


def test_migrations_are_versioned_and_applied_once(
    consent_store: ConsentStore, consent_database_url: str
) -> None:
    seed(consent_store, 2)
    again = open_consent_store(consent_database_url)  # a second host starting up
    again.close()
    with raw(consent_database_url) as conn:
        rows = conn.execute("SELECT version, name FROM consent_schema").fetchall()
    assert [tuple(row) for row in rows] == [(1, "ledger"), (2, "suspensions")]
    assert consent_store.verify().events_checked == 2


def test_a_newer_schema_is_refused(consent_store: ConsentStore, consent_database_url: str) -> None:
    with raw(consent_database_url) as conn:
        conn.execute("INSERT INTO consent_schema VALUES (99, 'future', '2030-01-01T00:00:00Z')")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        open_consent_store(consent_database_url)


def test_an_in_memory_ledger_for_tests() -> None:
    store = open_consent_store("sqlite:///:memory:")
    try:
        store.append([event()])
        assert store.consenting("acme", ["alice@example.org"]) == {"alice@example.org"}
        assert store.verify().ok
    finally:
        store.close()
    other = open_consent_store("sqlite:///:memory:")
    try:
        assert other.history("alice@example.org") == [], "each store has its own"
    finally:
        other.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = open_consent_store(f"sqlite:///{tmp_path}/consent.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "consent.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://consent.db", "sqlite:///", "sqlite:///dir/", "mysql://x/y", "consent.db"],
)
def test_bad_urls_say_what_a_good_one_looks_like(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        parse_database_url(url)


def test_url_forms() -> None:
    assert parse_database_url("sqlite:////var/lib/sw/consent.db") == (
        "sqlite",
        "/var/lib/sw/consent.db",
    )
    assert parse_database_url("sqlite:///consent.db") == ("sqlite", "consent.db")
    assert parse_database_url("postgresql://u@h/db")[0] == "postgresql"
