"""The directory snapshot: what the sources said at one moment, merged and checked,
as a read-only SQLite file.

Written once by :func:`write_snapshot` (in the builder child process) and never changed
after: the milter opens it ``immutable`` and reads it with indexed lookups, so a
directory of 100,000 accounts costs the milter a page cache, not a heap of Python
objects, and replacing it is swapping one file handle for another.

Merging rules (the sources are read in the order given; ``[[accounts]]`` overrides are
applied on top when an account is looked up, see :mod:`sendwarden.directory.live`):

- an account is known from the first source that names it (its "origin"); the others
  that name it are listed as well;
- a domain, login, uid or Unix user claimed by two accounts is a conflict: it stays
  with the account that owned it in the previous snapshot when that account is one of
  the claimants, and with nobody otherwise; conflicts are recorded and reported;
- rows that disagree about a setting: the stricter holds (lower limit, no subdomains).
"""

from __future__ import annotations

import contextlib
import operator
import os
import signal
import sqlite3
import struct
import sys
import threading
import time
import traceback
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from pathlib import Path
from typing import Any

from sendwarden.directory.sources import SourceData, SourceError, check_account_id, claim_columns

SCHEMA = """
CREATE TABLE logins (login TEXT PRIMARY KEY, account TEXT NOT NULL, shown TEXT,
    src INTEGER, place INTEGER) WITHOUT ROWID;
CREATE TABLE looks (look TEXT PRIMARY KEY, account TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE sources (n INTEGER PRIMARY KEY, source TEXT, label TEXT, place_kind TEXT);
CREATE TABLE account_pages (page INTEGER PRIMARY KEY, first TEXT NOT NULL, ids TEXT,
    idxs BLOB, srcs BLOB, places BLOB, limits BLOB, subdomains BLOB, domains TEXT,
    domain_lengths BLOB, logins TEXT, login_lengths BLOB, uids TEXT, uid_lengths BLOB);
CREATE TABLE also (account TEXT, src INTEGER, place INTEGER);
CREATE TABLE domains (domain TEXT PRIMARY KEY, account TEXT NOT NULL, src INTEGER,
    place INTEGER) WITHOUT ROWID;
CREATE TABLE uids (uid INTEGER PRIMARY KEY, account TEXT NOT NULL, name TEXT,
    src INTEGER, place INTEGER);
CREATE TABLE system_users (name TEXT PRIMARY KEY, account TEXT NOT NULL, src INTEGER,
    place INTEGER) WITHOUT ROWID;
CREATE TABLE conflicts (kind TEXT, key TEXT, claimants TEXT, kept TEXT);
CREATE TABLE pages (kind TEXT, first TEXT, keys TEXT, accounts TEXT, srcs TEXT,
    places TEXT, PRIMARY KEY (kind, first)) WITHOUT ROWID;
CREATE TABLE login_pages (kind TEXT, first TEXT, keys TEXT, accounts TEXT, srcs TEXT,
    places TEXT, PRIMARY KEY (kind, first)) WITHOUT ROWID;
CREATE TABLE account_logins (page INTEGER PRIMARY KEY, logins TEXT, login_lengths BLOB);
"""
#: Every table names an account by its id (older versions: by its index in accounts).
#: An account's domains, logins and uids are also kept with it (one line each), so
#: building an account is one read, and no index on the big tables is needed.
#: The logins' pages, and the account pages' logins, are tables of their own (older
#: versions: in pages and in account_pages, whose logins are now NULL): the builder
#: child writes them in a forked process, and a table copied whole into an empty one
#: is copied at C speed, where rows added to a table holding some are inserted one by
#: one (see _Forked.copy_logins).
SEPARATOR = "\n"
#: The snapshot of the system_users source (uids found in the password database).
SYSTEM_USERS = "system_users"


class ShrinkRefused(SourceError):
    """The new read lost too much of the directory to be believed."""


@dataclass(frozen=True)
class Origin:
    """Where an account or identity came from: ``domain_map /etc/userdomains line 12``."""

    source: str
    label: str
    place_kind: str
    place: int

    def __str__(self) -> str:
        if self.source == SYSTEM_USERS:
            return f"system_users (password database, uid {self.place})"
        return f"{self.source} {self.label} {self.place_kind} {self.place}"


@dataclass(frozen=True)
class Conflict:
    kind: str  # "domain", "login", "uid", "system user"
    key: str
    claimants: tuple[str, ...]
    kept: str | None  # the previous owner, who keeps it; None: nobody has it

    def __str__(self) -> str:
        holder = f"stays with {self.kept!r}" if self.kept else "belongs to nobody until fixed"
        claimants = " and ".join(repr(claimant) for claimant in self.claimants)
        return f"{self.kind} {self.key} is claimed by {claimants}; it {holder}"


@dataclass
class BuildReport:
    accounts: int = 0
    domains: int = 0
    logins: int = 0
    uids: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identities(self) -> int:
        return self.domains + self.logins

    def summary(self) -> str:
        return (
            f"{self.accounts} accounts, {self.domains} domains, {self.logins} logins, "
            f"{self.uids} uids, {len(self.conflicts)} conflict(s)"
        )


#: A row of a table, as written.
Row = tuple[Any, ...]


class _Claims:
    """One kind of identity claimed by accounts, kept as columns in the order claimed
    (key, account index, the key as first written, source, line or row); two
    claimants make a conflict. No object is made per claim: the claims are sorted by
    key once, and the usual directory, where no key repeats, needs nothing more."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.keys: list[Any] = []
        self.accounts: list[int] = []
        self.shown: list[Any] = []
        self.srcs: list[int] = []
        self.places: list[int] = []
        #: The owners' claims (positions in the columns), in key order; by settle().
        self.owners: list[int] = []
        self.contested: set[Any] = set()

    def claim_all(
        self,
        keys: Sequence[Any],
        accounts: Iterable[int],
        src: int,
        places: Sequence[int],
        shown: Sequence[Any] | None = None,
    ) -> None:
        """One source's claims, in its order."""
        self.keys += keys
        self.accounts += accounts
        self.shown += keys if shown is None else shown
        self.srcs += repeat(src, len(keys))
        self.places += places

    def settle(
        self, ids: Sequence[str], by_id: Mapping[str, int], previous: Snapshot | None
    ) -> list[Conflict]:
        """Each key's owner: the account of its first claim; a key claimed by another
        account as well goes to its previous owner, if that is a claimant, else to
        nobody. The conflicts (in the order they arose), for the log and ``account
        show``."""
        keys, accounts = self.keys, self.accounts
        order = sorted(range(len(keys)), key=keys.__getitem__)  # (stable: claim order)
        in_order = list(map(keys.__getitem__, order))
        repeats = list(compress(count(1), map(operator.eq, in_order[1:], in_order)))
        if not repeats:  # the usual case
            self.owners = order
            return []
        keep = [True] * len(order)
        runs: list[list[int]] = []  # [first, last] of each key claimed more than once
        for at in repeats:
            keep[at] = False  # (a later claim of a key)
            if runs and runs[-1][1] == at - 1:
                runs[-1][1] = at
            else:
                runs.append([at - 1, at])
        contests: list[tuple[int, Conflict]] = []
        for first, last in runs:
            claims = order[first : last + 1]  # (in claim order)
            owner = accounts[claims[0]]
            rivals = [claim for claim in claims if accounts[claim] != owner]
            if not rivals:
                continue  # one account claiming a key twice: its first claim holds
            key = in_order[first]
            self.contested.add(key)
            names = tuple(sorted({ids[accounts[claim]] for claim in claims}))
            before = previous.owner(self.kind, key) if previous is not None else None
            if before is not None and before in names:
                accounts[claims[0]] = by_id[before]  # (its first claim's place stays)
                kept: str | None = before
            else:
                keep[first] = False
                kept = None
            contests.append((rivals[0], Conflict(self.kind, str(key), names, kept)))
        self.owners = list(compress(order, keep))
        return [conflict for _at, conflict in sorted(contests, key=_FIRST)]

    def add_owners(self, keys: list[Any], accounts: list[int], src: int, places: list[int]) -> None:
        """Claims of keys nobody claimed (settled already: each its own owner)."""
        start = len(self.keys)
        self.claim_all(keys, accounts, src, places)
        self.owners = sorted(
            self.owners + list(range(start, len(self.keys))), key=self.keys.__getitem__
        )

    def column(self, values: Sequence[Any]) -> list[Any]:
        """``values`` (one of the columns) of the owners' claims, in key order."""
        return list(map(values.__getitem__, self.owners))

    def by_account(self, values: Sequence[Any], rank: Sequence[int], accounts: int) -> list[str]:
        """``values`` of the owners' claims, one text per account (by ``rank``, the
        place of each account index in id order), one a line, in the order claimed."""
        ranks = list(map(rank.__getitem__, self.accounts))
        claimed = self.owners if len(self.owners) < len(self.keys) else range(len(self.keys))
        grouped = sorted(sorted(claimed), key=ranks.__getitem__)  # (stable)
        in_order = list(map(ranks.__getitem__, grouped))
        starts = list(map(bisect_left, repeat(in_order), range(accounts + 1)))
        owned = list(map(values.__getitem__, grouped))
        return list(map(SEPARATOR.join, map(owned.__getitem__, map(slice, starts, starts[1:]))))


def write_snapshot(
    path: str | Path,
    sources: Sequence[SourceData],
    *,
    system_users: Mapping[int, str] | None = None,
    previous: Snapshot | None = None,
    max_shrink_percent: int = 100,
    fingerprint: str = "",
    written: Callable[[BuildReport], None] | None = None,
    parallel: bool = False,
) -> BuildReport:
    """Merge ``sources`` (in precedence order) and the password database into a new
    snapshot file at ``path`` (written beside it, then renamed into place).
    ``written`` is called with the report once the file is in place, before what the
    build made is freed (the builder child answers in it and exits). ``parallel``:
    the account pages are made by a forked process while this one makes the others,
    on a second core (only in a process of its own, such as the builder child: a fork
    of a process with other threads could meet their locks held).
    Raises :class:`ShrinkRefused` when it would lose too much of ``previous``."""
    ids: list[str] = []
    by_id: dict[str, int] = {}
    origin: list[tuple[int, int]] = []
    also: list[tuple[int, int, int]] = []
    limits: dict[int, int] = {}
    subdomains: dict[int, bool] = {}
    claims = {kind: _Claims(kind) for kind in ("domain", "uid", "system user")}
    #: Each source's logins as given (source, texts, account ids, places): claimed,
    #: settled and paged on their own (see :func:`_settle_logins`).
    login_claims: list[tuple[int, Sequence[str], Sequence[str], Sequence[int]]] = []
    uid_names: dict[int, str] = {}
    report = BuildReport()

    def account(account_id: str, src: int, place: int) -> int:
        index = by_id.get(account_id)
        if index is None:
            index = by_id[account_id] = len(ids)
            ids.append(account_id)
            origin.append((src, place))
        elif origin[index][0] != src:
            also.append((index, src, place))
        return index

    source_rows: list[tuple[int, str, str, str]] = []
    for src, data in enumerate(sources):
        source_rows.append((src, data.source, data.label, data.where))
        report.notes += [f"{data.label}: {note}" for note in data.notes]
        if by_id.keys().isdisjoint(data.accounts):  # all new (the first source): at once
            by_id.update(zip(data.accounts, count(len(ids))))
            ids += data.accounts
            origin += zip(repeat(src), data.accounts.values())
        else:
            for account_id, place in data.accounts.items():
                account(account_id, src, place)
        index_of = by_id.__getitem__
        for kind, claimed in (
            ("domain", data.domains),
            ("system user", data.system_users),
            ("uid", data.uids),
        ):
            if claimed:
                keys, names, places = claim_columns(claimed)
                claims[kind].claim_all(keys, map(index_of, names), src, places)
        if data.logins:
            login_claims.append((src, *claim_columns(data.logins)))
        for account_id, limit in data.limits.items():
            index = by_id[account_id]
            limits[index] = min(limit, limits.get(index, limit))
        for account_id, allowed in data.allow_subdomains.items():
            index = by_id[account_id]
            subdomains[index] = allowed and subdomains.get(index, True)

    conflicts = {kind: claims[kind].settle(ids, by_id, previous) for kind in claims}
    if system_users is not None:
        # The fallback for a uid no source lists: the account named by its user name
        # (or the account a source gave that Unix user to).
        src = len(source_rows)
        source_rows.append((src, SYSTEM_USERS, "password database", "uid"))
        users = claims["system user"]
        named = dict(zip(users.column(users.keys), users.column(users.accounts), strict=True))
        listed_uids = set(claims["uid"].column(claims["uid"].keys)) | claims["uid"].contested
        new_uids: list[int] = []
        new_owners: list[int] = []
        for uid, name in system_users.items():
            uid_names[uid] = name
            if uid in listed_uids:
                continue
            owner = named.get(name)
            if owner is None:
                try:
                    owner = account(check_account_id(name), src, uid)
                except ValueError:
                    report.notes.append(
                        f"password database: uid {uid}: {name!r} is no account name"
                    )
                    continue
            new_uids.append(uid)
            new_owners.append(owner)
        claims["uid"].add_owners(new_uids, new_owners, src, new_uids)

    report.accounts = len(ids)
    report.domains = len(claims["domain"].owners)
    report.uids = len(claims["uid"].owners)
    by_name = sorted(range(len(ids)), key=ids.__getitem__)  # account pages are in id order
    rank = [0] * len(ids)
    deque(map(rank.__setitem__, by_name, count()), maxlen=0)

    def settle_logins(before: Snapshot | None) -> _Logins:
        return _settle_logins(login_claims, ids, by_id, rank, before)

    def logins_known(kept: int, login_conflicts: list[Conflict]) -> None:
        """The report complete, and checked against the previous directory."""
        report.logins = kept
        report.conflicts = [
            *conflicts["domain"],
            *login_conflicts,
            *conflicts["system user"],
            *conflicts["uid"],
        ]
        _check_shrink(report, previous, max_shrink_percent)

    def write_logins(connection: sqlite3.Connection) -> None:
        """The logins' part, in a forked process (the previous snapshot opened anew:
        an SQLite connection is not to be used across a fork)."""
        before = Snapshot(previous.path) if previous is not None else None
        _hand_logins_back(connection, settle_logins(before))

    def write_accounts(connection: sqlite3.Connection) -> None:
        """The account pages (see :func:`_account_pages`), but for their logins: those
        are in account_logins (see :func:`_write_logins`)."""
        sources_of, places_of = zip(*origin, strict=True) if origin else ((), ())
        connection.executemany(
            f"INSERT INTO account_pages VALUES ({', '.join('?' * 14)})",
            _account_pages(
                list(map(ids.__getitem__, by_name)),
                [
                    array("q", by_name),  # where the sources named it: account_ids()
                    array("q", map(sources_of.__getitem__, by_name)),
                    array("q", map(places_of.__getitem__, by_name)),
                    array("q", map(limits.get, by_name, repeat(0))),  # 0: none given
                    array("b", map(_TRISTATE.__getitem__, map(subdomains.get, by_name))),
                ],
                [
                    claims["domain"].by_account(claims["domain"].keys, rank, len(ids)),
                    None,  # (in account_logins: see _write_logins)
                    claims["uid"].by_account(list(map(str, claims["uid"].keys)), rank, len(ids)),
                ],
            ),
        )

    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    logins: _Logins | None = None  # (None: settled by the forked process)
    logins_helper = None
    connection = sqlite3.connect(partial)
    try:
        # Parallel: the logins (settled, paged and grouped by account: the biggest
        # kind) by a forked process into a file of its own, copied in below, while
        # this one does the rest (without a fork, all here).
        if parallel:
            with contextlib.suppress(OSError):
                logins_helper = _Forked(partial.with_name(partial.name + "-logins"), write_logins)
        if logins_helper is None:
            logins = settle_logins(previous)
            logins_known(logins.count, logins.conflicts)
        connection.executescript(_BUILDING)
        connection.executescript(SCHEMA)
        insert = connection.executemany
        insert("INSERT INTO sources VALUES (?, ?, ?, ?)", source_rows)
        write_accounts(connection)
        insert("INSERT INTO also VALUES (?, ?, ?)", ((ids[i], s, p) for i, s, p in also))
        connection.execute("CREATE INDEX also_account ON also (account)")
        # Domains, look-alikes and logins in pages of PAGE_SIZE (see Snapshot._entry);
        # the rare key holding a line break, a row of its own.
        domains = _owned_columns(claims["domain"], ids)
        for kind, columns, table in (
            ("domain", domains, "domains (domain, account, src, place)"),
            ("look", _looks(domains[0], domains[1]), "looks (look, account)"),
        ):
            _insert_pages(connection, "pages", table, *_pages(kind, *columns))
        uids, uid_owners, uid_srcs, uid_places = _owned_columns(claims["uid"], ids)
        insert(
            "INSERT INTO uids VALUES (?, ?, ?, ?, ?)",
            zip(uids, uid_owners, map(uid_names.get, uids), uid_srcs, uid_places, strict=True),
        )
        insert(
            "INSERT INTO system_users VALUES (?, ?, ?, ?)",
            zip(*_owned_columns(claims["system user"], ids), strict=True),
        )
        if logins is not None:
            _write_logins(connection, logins)
        else:  # (settled and paged by the forked process: its tables copied in)
            assert logins_helper is not None
            logins_known(*logins_helper.copy_logins(connection))
        _insert_conflicts(connection, report.conflicts)
        insert(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("fingerprint", fingerprint),
                ("built", str(time.time())),
                *(
                    (f"count {table}", str(count))
                    for table, count in (
                        ("accounts", report.accounts),
                        ("domains", report.domains),
                        ("logins", report.logins),
                        ("uids", report.uids),
                    )
                ),
            ],
        )
        connection.execute("CREATE UNIQUE INDEX account_pages_first ON account_pages (first)")
        connection.commit()
    except BaseException:
        connection.close()
        partial.unlink(missing_ok=True)
        raise
    finally:
        connection.close()
        if logins_helper is not None:
            logins_helper.close()
    os.replace(partial, target)
    if written is not None:
        written(report)
    return report


class _Forked:
    """``write(connection)`` run in a forked process, into a file of its own with the
    snapshot's schema, while this process goes on; :meth:`copy_logins` waits for it
    and copies its tables into the snapshot's empty ones (at C speed: SQLite copies a
    whole table into an empty one page by page)."""

    def __init__(self, path: Path, write: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.pid: int | None = os.fork()
        if self.pid == 0:  # the forked process: write, and exit without unwinding
            status = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                connection = sqlite3.connect(path)
                connection.executescript(_BUILDING)
                connection.executescript(SCHEMA)
                write(connection)
                connection.commit()
                connection.close()
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)

    def attach(self, connection: sqlite3.Connection, name: str) -> None:
        """Wait for it to be done, and attach its file to ``connection`` as ``name``."""
        assert self.pid is not None
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = None
        if status != 0:
            raise RuntimeError(f"writing the {name} in a forked process failed ({status})")
        connection.commit()
        connection.execute("ATTACH DATABASE ? AS ?", (str(self.path), name))

    def copy_logins(self, connection: sqlite3.Connection) -> tuple[int, list[Conflict]]:
        """The tables of the logins it settled (:func:`_write_logins`), copied in; how
        many logins it kept, and their conflicts, in order."""
        self.attach(connection, "logins_part")
        for table in _LOGIN_TABLES:
            connection.execute(f"INSERT INTO {table} SELECT * FROM logins_part.{table}")
        (kept,) = connection.execute(
            "SELECT value FROM logins_part.meta WHERE key = 'count logins'"
        ).fetchone()
        return int(kept), _conflicts_from(
            connection.execute("SELECT * FROM logins_part.conflicts ORDER BY rowid")
        )

    def close(self) -> None:
        """Stop it if it is still at work (the build failed); remove its file."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.pid = None
        self.path.unlink(missing_ok=True)


#: What :func:`_write_logins` writes (copied whole into the empty tables of the
#: snapshot, see _Forked.copy_logins).
_LOGIN_TABLES = ("login_pages", "logins", "account_logins")


@dataclass
class _Logins:
    """The logins, settled: how many are kept, the conflicts (in the order they
    arose), each account's logins (one text per account, in id order, one a line),
    and the pages and odd rows of the logins table."""

    count: int
    conflicts: list[Conflict]
    by_account: list[str]
    pages: list[Row]
    odd: list[Row]


def _settle_logins(
    claimed: Sequence[tuple[int, Sequence[str], Sequence[str], Sequence[int]]],
    ids: Sequence[str],
    by_id: Mapping[str, int],
    rank: Sequence[int],
    previous: Snapshot | None,
) -> _Logins:
    """Each source's logins (source, texts, account ids, places) claimed casefolded,
    settled as every kind is (:meth:`_Claims.settle`) and paged; the largest part of
    a big build, so that the builder child does it in a process of its own."""
    claims = _Claims("login")
    for src, shown, names, places in claimed:
        claims.claim_all(_casefolded(shown), map(by_id.__getitem__, names), src, places, shown)
    conflicts = claims.settle(ids, by_id, previous)
    pages, odd = _pages("login", *_owned_columns(claims, ids))
    by_account = claims.by_account(claims.shown, rank, len(ids))
    return _Logins(len(claims.owners), conflicts, by_account, pages, odd)


def _write_logins(connection: sqlite3.Connection, logins: _Logins) -> None:
    """The logins' tables (:data:`_LOGIN_TABLES`)."""
    _insert_pages(
        connection, "login_pages", "logins (login, account, src, place)", logins.pages, logins.odd
    )
    texts, lengths = _text_pages(logins.by_account)
    connection.executemany(
        "INSERT INTO account_logins VALUES (?, ?, ?)",
        zip(range(len(texts)), texts, lengths, strict=True),
    )


def _hand_logins_back(connection: sqlite3.Connection, logins: _Logins) -> None:
    """In the logins' forked process: its tables, and what the build reports, its
    conflicts and count (read back by _Forked.copy_logins)."""
    _write_logins(connection, logins)
    _insert_conflicts(connection, logins.conflicts)
    connection.execute("INSERT INTO meta VALUES ('count logins', ?)", (str(logins.count),))


def _insert_pages(
    connection: sqlite3.Connection, pages_table: str, table: str, pages: list[Row], odd: list[Row]
) -> None:
    """A kind's pages into ``pages_table``, and its rows no page can hold into
    ``table`` (see :func:`_pages`)."""
    connection.executemany(f"INSERT INTO {pages_table} VALUES (?, ?, ?, ?, ?, ?)", pages)
    if odd:
        marks = ", ".join("?" * len(odd[0]))
        connection.executemany(f"INSERT INTO {table} VALUES ({marks})", odd)


def _insert_conflicts(connection: sqlite3.Connection, conflicts: Iterable[Conflict]) -> None:
    connection.executemany(
        "INSERT INTO conflicts VALUES (?, ?, ?, ?)",
        (
            (conflict.kind, conflict.key, "\n".join(conflict.claimants), conflict.kept)
            for conflict in conflicts
        ),
    )


def _conflicts_from(rows: Iterable[Sequence[Any]]) -> list[Conflict]:
    """Conflicts as the conflicts table holds them (see :func:`_insert_conflicts`)."""
    return [
        Conflict(
            str(kind),
            str(key),
            tuple(str(claimants).split("\n")),
            None if kept is None else str(kept),
        )
        for kind, key, claimants, kept in rows
    ]


#: Identities per page: a lookup reads one page (a few pages of SQLite's) and finds
#: its key in it; writing 500,000 logins is 8,000 rows instead of 500,000.
PAGE_SIZE = 32
#: An account's page, with its logins from account_logins (True) or, in a snapshot of
#: an older version, from the page itself (False).
_ACCOUNT_PAGE_QUERIES = {
    logins_apart: "SELECT a.ids, a.idxs, a.srcs, a.places, a.limits, a.subdomains, a.domains, "
    f"a.domain_lengths, {'l' if logins_apart else 'a'}.logins, "
    f"{'l' if logins_apart else 'a'}.login_lengths, a.uids, a.uid_lengths FROM account_pages "
    f"AS a {'JOIN account_logins AS l USING (page) ' if logins_apart else ''}"
    "WHERE a.first <= ? ORDER BY a.first DESC LIMIT 1"
    for logins_apart in (False, True)
}
#: A key's page, in its kind's pages table ({}).
_PAGE_QUERIES = {
    numbers: f"SELECT keys, accounts{', srcs, places' if numbers else ''} FROM {{}} "
    "WHERE kind = ? AND first <= ? ORDER BY first DESC LIMIT 1"
    for numbers in (False, True)
}


def _owned_columns(claims: _Claims, ids: Sequence[str]) -> list[list[Any]]:
    """The owners' claims in key order, as columns: keys, account ids, sources, places."""
    return [
        claims.column(claims.keys),
        list(map(ids.__getitem__, claims.column(claims.accounts))),
        claims.column(claims.srcs),
        claims.column(claims.places),
    ]


def _pages(
    kind: str,
    keys: list[Any],
    accounts: list[str],
    srcs: list[int] | None = None,
    places: list[int] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Keys (sorted) with their account ids, sources and places, as pages ``(kind,
    first key, keys, account ids, sources, places)`` of :data:`PAGE_SIZE` keys: the keys
    and account ids one a line, the sources and places as 64-bit integers (native
    order: the file never leaves this host); and the rows whose key holds a line break,
    which no page can hold (rows of their kind's own table)."""
    odd: list[Row] = []
    numbers = [srcs, places] if srcs is not None and places is not None else []
    if "\n".join(keys).count("\n") != max(len(keys) - 1, 0):
        plain = ["\n" not in key for key in keys]
        odd = list(compress(zip(keys, accounts, *numbers, strict=True), map(operator.not_, plain)))
        keys, accounts = list(compress(keys, plain)), list(compress(accounts, plain))
        numbers = [list(compress(column, plain)) for column in numbers]
    starts = range(0, len(keys), PAGE_SIZE)
    join = "\n".join
    columns: list[Iterable[Any]] = [
        repeat(kind),
        keys[::PAGE_SIZE],
        [join(keys[start : start + PAGE_SIZE]) for start in starts],
        [join(accounts[start : start + PAGE_SIZE]) for start in starts],
    ]
    for column in numbers:  # the source and its line or row
        packed = array("q", column)
        columns.append([packed[start : start + PAGE_SIZE].tobytes() for start in starts])
    if not numbers:
        columns += (repeat(None), repeat(None))
    return list(zip(*columns, strict=False)), odd  # (repeat() is endless)


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


#: Accounts per account page (in the order of their index: where a source named them).
ACCOUNT_PAGE = 16
#: allow_subdomains as a byte: not given, false, true.
_TRISTATE = {None: 0, False: 1, True: 2}
_FROM_TRISTATE = (None, False, True)


def _account_pages(
    ids: Sequence[str], numbers: list[array[int]], texts: list[list[str] | None]
) -> list[Row]:
    """The accounts (sorted by id), :data:`ACCOUNT_PAGE` to a row: ``(page, first id,
    ids one a line, *numbers as arrays, *(texts run together, each one's length))``, so
    that building an account is one read, and writing 100,000 of them is 6,000 rows.
    A text given as None: NULL (the logins, kept in account_logins: see _write_logins)."""
    starts = range(0, len(ids), ACCOUNT_PAGE)
    columns: list[Iterable[Any]] = [
        range(len(starts)),
        ids[::ACCOUNT_PAGE],
        ["\n".join(ids[start : start + ACCOUNT_PAGE]) for start in starts],
    ]
    columns += (
        [column[start : start + ACCOUNT_PAGE].tobytes() for start in starts] for column in numbers
    )
    for text in texts:
        columns += _text_pages(text) if text is not None else ([None] * len(starts),) * 2
    return list(zip(*columns, strict=True))


def _text_pages(text: list[str]) -> tuple[list[str], list[bytes]]:
    """One text per account (in id order), :data:`ACCOUNT_PAGE` to a page: each page's
    texts run together, and their lengths."""
    starts = range(0, len(text), ACCOUNT_PAGE)
    lengths = array("I", map(len, text))
    return (
        ["".join(text[start : start + ACCOUNT_PAGE]) for start in starts],
        [lengths[start : start + ACCOUNT_PAGE].tobytes() for start in starts],
    )


def _looks(domains: list[str], accounts: list[str]) -> tuple[list[str], list[str]]:
    """The UTS #39 skeleton of every domain (sorted), so that a look-alike of a
    customer's domain is found as theirs (the first owner, in domain order, of a
    shared skeleton): the skeletons, sorted, and their account ids."""
    # Imported here: ICU is only needed to write a snapshot, and the milter imports
    # this module before it starts the builder child (see child.py, which imports it
    # while its query runs).
    from sendwarden.policy.rendering import domain_skeletons

    looks = dict(zip(reversed(domain_skeletons(domains)), reversed(accounts), strict=True))
    keys = sorted(looks)  # (strings sort faster than pairs)
    return keys, list(map(looks.__getitem__, keys))


#: How the file being built is written: nobody reads it until it is complete and renamed
#: into place, so no journal and no syncs (a crash leaves a ".partial" file that the
#: next build removes).
_BUILDING = (
    "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA page_size = 8192; "
    "PRAGMA locking_mode = EXCLUSIVE; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;"
)


def _casefolded(texts: Sequence[str]) -> Sequence[str]:
    """Each text casefolded: the texts themselves when none changes (casefolding maps
    each character on its own, so all of them read as one text tell)."""
    joined = "\n".join(texts)
    return texts if joined.casefold() == joined else list(map(str.casefold, texts))


def _check_shrink(report: BuildReport, previous: Snapshot | None, max_shrink_percent: int) -> None:
    if previous is None or max_shrink_percent >= 100:
        return
    before = previous.counts()
    had = before["domains"] + before["logins"]
    if had == 0:
        return
    lost = had - report.identities
    if lost * 100 > had * max_shrink_percent:
        raise ShrinkRefused(
            f"the sources now give {report.identities} domains and logins where the directory "
            f"has {had}: losing more than directory.max_shrink_percent = {max_shrink_percent}% "
            "at once looks like a truncated or broken source; the directory is kept as it was"
        )


@dataclass(frozen=True)
class AccountRecord:
    """One account as the sources describe it (before ``[[accounts]]`` overrides)."""

    id: str
    origin: Origin
    also: tuple[Origin, ...]
    domains: tuple[str, ...]
    logins: tuple[str, ...]
    uids: tuple[int, ...]
    recipients_per_hour: int | None
    allow_subdomains: bool | None


_OWNER_QUERIES = {
    "domain": "SELECT a.id FROM domains d JOIN accounts a ON a.idx = d.account WHERE d.domain = ?",
    "login": "SELECT a.id FROM logins l JOIN accounts a ON a.idx = l.account WHERE l.login = ?",
    "uid": "SELECT a.id FROM uids u JOIN accounts a ON a.idx = u.account WHERE u.uid = ?",
    "look": "SELECT a.id FROM looks l JOIN accounts a ON a.idx = l.account WHERE l.look = ?",
    "system user": (
        "SELECT a.id FROM system_users s JOIN accounts a ON a.idx = s.account WHERE s.name = ?"
    ),
}


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
#: Where each kind's rows are (in a paged snapshot: those whose key no page holds).
_TABLE_OF = {
    "domain": ("domains", "domain"),
    "login": ("logins", "login"),
    "look": ("looks", "look"),
    "uid": ("uids", "uid"),
    "system user": ("system_users", "name"),
}
_PAGED = frozenset({"domain", "login", "look"})
#: A page's sources and places: 64-bit integers, as array("q") wrote them.
_NUMBER = struct.Struct("=q")


#: Most of a snapshot read through a memory map (more than any directory needs).
MMAP_BYTES = 1 << 30


class Snapshot:
    """A written snapshot, opened read-only. Lookups are safe from any thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection = sqlite3.connect(
            f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False
        )
        # Read through a memory map: a lookup touches the kernel's page cache with no
        # system call, and no page is copied into a cache of SQLite's own. The file is
        # never changed once written (a new one replaces its name), so the map holds.
        self._connection.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        self._lock = threading.Lock()
        self._sources = {
            row[0]: row[1:] for row in self._connection.execute("SELECT * FROM sources")
        }
        tables = {row[0] for row in self._connection.execute(_TABLES)}
        # A snapshot kept by an older version has no look-alike index until it is
        # rebuilt, and no pages: each identity is a row of its kind's table. Those
        # tables are only read when they hold something.
        self._has_looks = "looks" in tables
        self._paged = "pages" in tables
        self._accounts_paged = "account_pages" in tables
        # (older versions: the logins' pages in pages, the accounts' in account_pages)
        page_table = {kind: "pages" for kind in _PAGED}
        if "login_pages" in tables:
            page_table["login"] = "login_pages"
        # (each kind's two queries written once here, not at every lookup)
        self._page_queries = {
            (kind, numbers): query.format(table)
            for kind, table in page_table.items()
            for numbers, query in _PAGE_QUERIES.items()
        }
        self._account_query = _ACCOUNT_PAGE_QUERIES["account_logins" in tables]
        self._has_also = (
            self._connection.execute("SELECT 1 FROM also LIMIT 1").fetchone() is not None
        )
        self._rows = {
            kind: table in tables
            and (
                not self._paged
                or self._connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
            )
            for kind, (table, _column) in _TABLE_OF.items()
        }

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def _one(self, sql: str, parameters: Sequence[object]) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._connection.execute(sql, parameters).fetchone()
        return row

    def _all(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._connection.execute(sql, parameters).fetchall())

    def owner(self, kind: str, key: object) -> str | None:
        """The account id owning a domain, a domain's skeleton ("look"), casefolded
        login, uid or Unix user name."""
        if kind == "look" and not self._has_looks:
            return None
        entry = self._entry(kind, key)
        if entry is not None:
            return entry[0]
        if not self._rows.get(kind, True):
            return None
        if self._accounts_paged:  # (each table names the account by its id)
            table, column = _TABLE_OF[kind]
            row = self._one(f"SELECT account FROM {table} WHERE {column} = ?", (key,))
        else:
            row = self._one(_OWNER_QUERIES[kind], (key,))
        return None if row is None else str(row[0])

    def origin_of(self, kind: str, key: object) -> Origin | None:
        """The source line or row that gave this identity to its account."""
        entry = self._entry(kind, key, numbers=True)
        if entry is not None:
            return self._origin(entry[1], entry[2])
        table, column = _TABLE_OF[kind]
        row = self._one(f"SELECT src, place FROM {table} WHERE {column} = ?", (key,))
        return None if row is None else self._origin(row[0], row[1])

    def _entry(
        self, kind: str, key: object, *, numbers: bool = False
    ) -> tuple[str, int | None, int | None] | None:
        """``(account id, source, place)`` of a key on its page, if it is on one (the
        last page whose first key is not after it, which holds it if anyone does); the
        source and place only when asked for."""
        if not self._paged or kind not in _PAGED or not isinstance(key, str) or "\n" in key:
            return None  # (no page holds a key with a line break)
        page = self._one(self._page_queries[kind, numbers], (kind, key))
        if page is None:
            return None
        keys = f"\n{page[0]}\n"
        found = keys.find(f"\n{key}\n")
        if found < 0:
            return None
        at = keys.count("\n", 0, found)
        account = str(page[1]).split("\n", at + 1)[at]
        if not numbers:
            return account, None, None
        srcs, places = (
            _NUMBER.unpack_from(column, _NUMBER.size * at)[0] if isinstance(column, bytes) else None
            for column in page[2:]
        )
        return account, srcs, places

    def _origin(self, src: object, place: object) -> Origin:
        source, label, place_kind = self._sources[int(str(src))]
        return Origin(str(source), str(label), str(place_kind), int(str(place)))

    def record(self, account_id: str) -> AccountRecord | None:
        if self._accounts_paged:
            return self._paged_record(account_id)
        row = self._one(
            "SELECT idx, src, place, recipients_per_hour, allow_subdomains, domains, logins, "
            "uids FROM accounts WHERE id = ?",
            (account_id,),
        )
        if row is None:
            return None
        index, src, place, limit, allowed, domains, logins, uids = row
        return self._record(
            account_id,
            (src, place, index),
            (domains, logins, uids),
            None if limit is None else int(str(limit)),
            None if allowed is None else bool(allowed),
        )

    def _paged_record(self, account_id: str) -> AccountRecord | None:
        page: tuple[Any, ...] | None = self._one(self._account_query, (account_id,))
        if page is None:
            return None
        ids = f"\n{page[0]}\n"
        found = ids.find(f"\n{account_id}\n")
        if found < 0 or "\n" in account_id:
            return None
        at = ids.count("\n", 0, found)
        _idxs, srcs, places, limits, allowed, *texts = page[1:]
        src, place, limit = (
            _NUMBER.unpack_from(column, _NUMBER.size * at)[0] for column in (srcs, places, limits)
        )
        domains, logins, uids = (
            _text_at(text, lengths, at)
            for text, lengths in zip(texts[::2], texts[1::2], strict=True)
        )
        return self._record(
            account_id,
            (src, place, account_id),
            (domains, logins, uids),
            limit or None,
            _FROM_TRISTATE[allowed[at]],
        )

    def _record(
        self,
        account_id: str,
        where: tuple[object, object, object],
        owned: tuple[object, object, object],
        limit: int | None,
        allowed: bool | None,
    ) -> AccountRecord:
        """``where``: its source, place, and what the also table names it by;
        ``owned``: its domains, logins and uids, one a line."""
        src, place, also = where
        domains, logins, uids = owned
        return AccountRecord(
            id=account_id,
            origin=self._origin(src, place),
            also=self._also(also),
            domains=_split(domains),
            logins=_split(logins),
            uids=tuple(int(uid) for uid in _split(uids)),
            recipients_per_hour=limit,
            allow_subdomains=allowed,
        )

    def _also(self, account: object) -> tuple[Origin, ...]:
        """The other sources that name an account (by its id, or in a snapshot of an
        older version its index)."""
        if not self._has_also:
            return ()
        return tuple(
            self._origin(other_src, other_place)
            for other_src, other_place in self._all(
                "SELECT src, place FROM also WHERE account = ?", (account,)
            )
        )

    def account_ids(self) -> list[str]:
        if self._accounts_paged:  # in the order the sources named them
            named: list[tuple[int, str]] = []
            for ids, idxs in self._all("SELECT ids, idxs FROM account_pages"):
                indexes: array[int] = array("q")
                indexes.frombytes(bytes(idxs))  # type: ignore[call-overload]
                named += zip(indexes, str(ids).split("\n"), strict=True)
            return [account for _index, account in sorted(named)]
        return [str(row[0]) for row in self._all("SELECT id FROM accounts ORDER BY idx")]

    def uid_name(self, uid: int) -> str | None:
        row = self._one("SELECT name FROM uids WHERE uid = ?", (uid,))
        return None if row is None or row[0] is None else str(row[0])

    def conflicts(self) -> list[Conflict]:
        return _conflicts_from(self._all("SELECT * FROM conflicts"))

    def counts(self) -> dict[str, int]:
        """How many accounts, domains, logins and uids it holds."""
        counts = {}
        for table in ("accounts", "domains", "logins", "uids"):
            written = self.meta(f"count {table}")  # (kept by an older version: counted)
            counts[table] = int(
                written
                if written is not None
                else str(self._all(f"SELECT count(*) FROM {table}")[0][0])
            )
        return counts

    def conflicts_of(self, account_id: str) -> list[Conflict]:
        return [conflict for conflict in self.conflicts() if account_id in conflict.claimants]


def snapshots_in(directory: str | Path) -> Iterable[Path]:
    return sorted(Path(directory).glob("snapshot-*.db"))


def _text_at(text: str, lengths: bytes, at: int) -> str:
    """The ``at``-th of the texts run together in an account page's column."""
    sizes = struct.unpack_from(f"={at + 1}I", lengths)
    start = sum(sizes[:at])
    return text[start : start + sizes[at]]


def _split(value: object) -> tuple[str, ...]:
    return tuple(str(value).split(SEPARATOR)) if value else ()
