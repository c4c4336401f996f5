"""The snapshot keeps domains, look-alikes and logins in pages of many keys (a lookup
finds the page, then its key in it): whatever the keys, page sizes and boundaries, a
lookup answers exactly what one row per key would, and a snapshot written before pages
(one row per key) is still read."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.directory import snapshot as snapshot_module
from sendwarden.directory.snapshot import Snapshot, write_snapshot
from sendwarden.directory.sources import SourceData
from sendwarden.policy.rendering import domain_skeleton

ACCOUNTS = st.sampled_from(["acme", "globex", "initech", "m.a-l_l0ry"])
#: Logins as a hostile panel could store them: any text, line breaks and tabs included,
#: and many alike, so that they sort next to each other and across page boundaries.
LOGINS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet="ab\n\t@.Ss\u00df\u0130", min_size=1, max_size=6),
    st.integers(0, 400).map(lambda n: f"user{n}@site{n % 7}.example"),
)
DOMAINS = st.integers(0, 300).map(lambda n: f"site{n}.example") | st.sampled_from(
    ["xn--bcher-kva.example", "rn.example", "m.example", "a", "z" * 63]
)


def source(name: str, domains: list[tuple[str, str]], logins: list[tuple[str, str]]) -> SourceData:
    data = SourceData(name, name, "row")
    for place, (domain, account) in enumerate(domains, start=1):
        data.account(account, place)
        data.domains.append((domain, account, place))
    for place, (login, account) in enumerate(logins, start=len(domains) + 1):
        data.account(account, place)
        data.logins.append((login, account, place))
    return data


def expected(claims: list[tuple[str, str, int]], key: object = str) -> dict[str, tuple[str, int]]:
    """key -> (account, place) as one row per key gives it: the first claim, or nobody's
    when two accounts claim it (no previous snapshot to keep it)."""
    first: dict[str, tuple[str, int]] = {}
    contested: set[str] = set()
    for identity, account, place in claims:
        k = identity.casefold() if key is str.casefold else identity
        if k in first and first[k][0] != account:
            contested.add(k)
        first.setdefault(k, (account, place))
    return {k: v for k, v in first.items() if k not in contested}


@settings(max_examples=50, deadline=None)
@given(
    domains=st.lists(st.tuples(DOMAINS, ACCOUNTS), max_size=150),
    logins=st.lists(st.tuples(LOGINS, ACCOUNTS), max_size=250),
    page_size=st.sampled_from([1, 2, 3, 64]),
    account_page=st.sampled_from([1, 2, 3, 32]),
    probes=st.lists(LOGINS, max_size=20),
    limits=st.dictionaries(ACCOUNTS, st.integers(1, 10**6)),
    subdomains=st.dictionaries(ACCOUNTS, st.booleans()),
)
def test_a_paged_lookup_answers_what_a_row_per_key_would(
    domains: list[tuple[str, str]],
    logins: list[tuple[str, str]],
    page_size: int,
    account_page: int,
    probes: list[str],
    limits: dict[str, int],
    subdomains: dict[str, bool],
) -> None:
    data = source("sql", domains, logins)
    data.limits = {a: n for a, n in limits.items() if a in data.accounts}
    data.allow_subdomains = {a: b for a, b in subdomains.items() if a in data.accounts}
    want_domains = expected(data.domains)
    want_logins = expected(data.logins, str.casefold)
    shown: dict[str, str] = {}
    for login, _account, _place in data.logins:
        shown.setdefault(login.casefold(), login)
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(snapshot_module, "PAGE_SIZE", page_size),
        mock.patch.object(snapshot_module, "ACCOUNT_PAGE", account_page),
    ):
        path = Path(tmp) / "s.db"
        report = write_snapshot(path, [data])
        snap = Snapshot(path)
        try:
            assert report.domains == len(want_domains) and report.logins == len(want_logins)
            assert snap.counts()["logins"] == len(want_logins)
            for kind, want in (("domain", want_domains), ("login", want_logins)):
                for key, (account, place) in want.items():
                    assert snap.owner(kind, key) == account, (kind, key)
                    origin = snap.origin_of(kind, key)
                    assert origin is not None and origin.place == place, (kind, key)
            for probe in [*probes, "", "\n", "zzzz", "\x00", *(k + "\n" for k in want_logins)]:
                key = probe.casefold()
                assert snap.owner("login", key) == want_logins.get(key, (None,))[0], key
                assert (snap.origin_of("login", key) is None) == (key not in want_logins)
            # The first owner, in domain order, of a skeleton is the look-alike's owner.
            looks: dict[str, str] = {}
            for domain in sorted(want_domains):
                looks.setdefault(domain_skeleton(domain), want_domains[domain][0])
            for look, account in looks.items():
                assert snap.owner("look", look) == account
            assert snap.owner("look", "no-such-look.example") is None
            # Each account as one row of its own would give it, in the sources' order.
            assert snap.account_ids() == list(data.accounts)
            for account, place in data.accounts.items():
                record = snap.record(account)
                assert record is not None and record.origin.place == place
                assert record.domains == tuple(
                    k for k, (owner, _) in want_domains.items() if owner == account
                )
                logins_of = [shown[k] for k, (owner, _) in want_logins.items() if owner == account]
                if not any("\n" in login for login in logins_of):  # (one a line, as before)
                    assert record.logins == tuple(logins_of)
                assert record.recipients_per_hour == data.limits.get(account)
                assert record.allow_subdomains == data.allow_subdomains.get(account)
            assert snap.record("nobody") is None
        finally:
            snap.close()


def test_a_key_with_a_line_break_is_a_row_of_its_own(tmp_path: Path) -> None:
    data = source("sql", [("acme.example", "acme")], [("a\nb", "acme"), ("a", "globex")])
    write_snapshot(tmp_path / "s.db", [data])
    with sqlite3.connect(tmp_path / "s.db") as connection:
        rows = connection.execute("SELECT login FROM logins").fetchall()
    connection.close()
    assert rows == [("a\nb",)]
    snap = Snapshot(tmp_path / "s.db")
    assert snap.owner("login", "a\nb") == "acme" and snap.owner("login", "a") == "globex"
    assert snap.owner("login", "a\n") is None and snap.owner("login", "b") is None
    origin = snap.origin_of("login", "a\nb")
    assert origin is not None and origin.place == 2
    snap.close()


#: The schema of a snapshot as versions before pages wrote it (one row per key).
OLD_SCHEMA = """
CREATE TABLE logins (login TEXT PRIMARY KEY, account INTEGER NOT NULL, shown TEXT,
    src INTEGER, place INTEGER) WITHOUT ROWID;
CREATE TABLE looks (look TEXT PRIMARY KEY, account INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE sources (n INTEGER PRIMARY KEY, source TEXT, label TEXT, place_kind TEXT);
CREATE TABLE accounts (idx INTEGER PRIMARY KEY, id TEXT NOT NULL, src INTEGER,
    place INTEGER, recipients_per_hour INTEGER, allow_subdomains INTEGER,
    domains TEXT, logins TEXT, uids TEXT);
CREATE TABLE also (account INTEGER, src INTEGER, place INTEGER);
CREATE TABLE domains (domain TEXT PRIMARY KEY, account INTEGER NOT NULL, src INTEGER,
    place INTEGER) WITHOUT ROWID;
CREATE TABLE uids (uid INTEGER PRIMARY KEY, account INTEGER NOT NULL, name TEXT,
    src INTEGER, place INTEGER);
CREATE TABLE system_users (name TEXT PRIMARY KEY, account INTEGER NOT NULL, src INTEGER,
    place INTEGER) WITHOUT ROWID;
CREATE TABLE conflicts (kind TEXT, key TEXT, claimants TEXT, kept TEXT);
CREATE UNIQUE INDEX accounts_id ON accounts (id);
"""


def test_a_snapshot_of_one_row_per_key_is_still_read(tmp_path: Path) -> None:
    """As an older version kept it: no pages, no counts, every key and account a row."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
        connection.executemany(
            "INSERT INTO sources VALUES (?, ?, ?, ?)",
            [(0, "domain_map", "/etc/userdomains", "line"), (1, "sql", "sql db", "row")],
        )
        connection.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (0, "acme", 0, 1, 50, 1, "acme.example", "Alice", "1001"),
                (1, "globex", 1, 3, None, None, "globex.example", "bob@x.example", ""),
            ],
        )
        connection.execute("INSERT INTO also VALUES (0, 1, 7)")
        connection.executemany(
            "INSERT INTO domains VALUES (?, ?, ?, ?)",
            [("acme.example", 0, 0, 1), ("globex.example", 1, 1, 3)],
        )
        connection.execute("INSERT INTO looks VALUES (?, 0)", (domain_skeleton("acme.example"),))
        connection.executemany(
            "INSERT INTO logins VALUES (?, ?, ?, ?, ?)",
            [("alice", 0, "Alice", 1, 2), ("bob@x.example", 1, "bob@x.example", 1, 4)],
        )
        connection.execute("INSERT INTO uids VALUES (1001, 0, 'acme', 1, 5)")
    connection.close()
    snap = Snapshot(path)
    assert snap.owner("domain", "globex.example") == "globex"
    assert snap.owner("login", "alice") == "acme" and snap.owner("login", "bob") is None
    assert snap.owner("look", domain_skeleton("acme.example")) == "acme"
    assert snap.owner("uid", 1001) == "acme" and snap.uid_name(1001) == "acme"
    origin = snap.origin_of("login", "bob@x.example")
    assert origin is not None and str(origin) == "sql sql db row 4"
    acme = snap.record("acme")
    assert acme is not None and acme.domains == ("acme.example",) and acme.uids == (1001,)
    assert acme.recipients_per_hour == 50 and acme.allow_subdomains is True
    assert [str(o) for o in acme.also] == ["sql sql db row 7"]
    assert snap.account_ids() == ["acme", "globex"]
    assert snap.counts() == {"accounts": 2, "domains": 2, "logins": 2, "uids": 1}
    snap.close()


@settings(max_examples=25, deadline=None)
@given(
    domains=st.lists(st.tuples(DOMAINS, ACCOUNTS), max_size=40),
    logins=st.lists(st.tuples(LOGINS, ACCOUNTS), max_size=120),
)
def test_a_snapshot_with_the_logins_among_the_pages_is_still_read(
    domains: list[tuple[str, str]], logins: list[tuple[str, str]]
) -> None:
    """As the version before kept it: the logins' pages in ``pages`` and each account
    page's logins in ``account_pages`` (now tables of their own): the same answers."""
    with tempfile.TemporaryDirectory() as tmp:
        now, before = Path(tmp) / "now.db", Path(tmp) / "before.db"
        write_snapshot(now, [source("sql", domains, logins)])
        before.write_bytes(now.read_bytes())
        with sqlite3.connect(before) as connection:
            connection.execute("INSERT INTO pages SELECT * FROM login_pages")
            connection.execute(
                "UPDATE account_pages SET (logins, login_lengths) = (SELECT logins, "
                "login_lengths FROM account_logins AS l WHERE l.page = account_pages.page)"
            )
            connection.execute("DROP TABLE login_pages")
            connection.execute("DROP TABLE account_logins")
        connection.close()
        current, older = Snapshot(now), Snapshot(before)
        try:
            for login, _account in logins:
                key = login.casefold()
                assert older.owner("login", key) == current.owner("login", key)
                assert older.origin_of("login", key) == current.origin_of("login", key)
            for account in current.account_ids():
                assert older.record(account) == current.record(account)
            assert older.account_ids() == current.account_ids()
        finally:
            current.close()
            older.close()
