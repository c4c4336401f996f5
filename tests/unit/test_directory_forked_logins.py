"""The builder child's logins, settled and paged by a forked process of their own
(``write_snapshot(parallel=True)``), make the same directory as a build in one
process: table by table, the same report (conflicts in the same order), the same
error naming the same rows, whatever the sources hold."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from sendwarden.config import settings_from_mapping
from sendwarden.directory.build import build
from sendwarden.directory.snapshot import Snapshot
from sendwarden.directory.sources import SourceError
from tests.support.forked_build import build_forked, snapshot_tables, worker

ACCOUNTS = st.sampled_from(["acme", "web1", "initech", "root", "Ünï"])
DOMAINS = st.sampled_from(["a.example", "c.example", "A.Example", "ünï.example"])
#: Logins a customer might write, from a few so that they collide: case and casefold
#: twins (ß/ss/SS, İ, ﬃ), line breaks, control characters, combining marks, a
#: right-to-left override, addresses, blanks around; or any text.
LOGINS = st.one_of(
    st.sampled_from(
        [
            "bob",
            "Bob",
            "BOB",
            "ß",
            "ss",
            "SS",
            "İ",
            "i̇",
            "ﬃ",
            "ffi",
            "a\nb",
            "A\nB",
            "esc\x1b[0m",
            "nul\x00",
            "e\u0301",
            "\u202eevil",
            " pad",
            "eve@a.example",
            "Eve@A.example",
        ]
    ),
    st.text(st.characters(blacklist_categories=["Cs", "Z"]), min_size=1, max_size=4),
)
ROWS = st.lists(
    st.tuples(
        ACCOUNTS,
        st.one_of(st.none(), DOMAINS),
        st.one_of(st.none(), LOGINS),
        st.one_of(st.none(), st.integers(1000, 1002)),
    ),
    max_size=14,
)
#: Rows a panel must not hold: each is an error naming its row.
BAD_ROWS = st.sampled_from(
    [
        ("bad id", None, None, None),
        ("a\nb", "a.example", None, None),
        ("acme", "x\n.example", None, None),
        ("acme", "tab\t.example", None, None),
        ("acme", None, "", None),
        ("acme", None, " \n ", None),
        ("acme", None, None, -1),
    ]
)
LINES = st.lists(st.tuples(DOMAINS, ACCOUNTS), max_size=4)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with worker() as executor:
        yield executor


def _panel(folder: Path, name: str, rows: list[tuple[object, ...]]) -> str:
    """An SQLite panel database of the rows, in order; its URL."""
    path = folder / name
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (n INTEGER, account, domain, login, uid)")
        connection.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?)", [(n, *row) for n, row in enumerate(rows)]
        )
    connection.close()
    return f"sqlite:///{path}"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=ROWS,
    bad=st.lists(st.tuples(st.integers(0, 14), BAD_ROWS), max_size=2) | st.just([]),
    lines=LINES,
    before=st.one_of(st.none(), ROWS),
    system_users=st.booleans(),
    shrink=st.sampled_from([100, 50, 0]),
)
@example(  # a login kept by its previous owner; a line break (a row, not on a page)
    rows=[("acme", None, "Bob", None), ("web1", None, "bob", None), ("acme", None, "a\nb", 7)],
    bad=[],
    lines=[("a.example", "web1")],
    before=[("web1", None, "BOB", None)],
    system_users=False,
    shrink=100,
)
@example(  # two thirds of the logins gone at once: refused
    rows=[("acme", None, "bob", None)],
    bad=[],
    lines=[],
    before=[("acme", None, "bob", None), ("acme", None, "ss", None), ("web1", None, "x", None)],
    system_users=True,
    shrink=50,
)
def test_the_forked_logins_make_the_same_directory(
    pool: ProcessPoolExecutor,
    rows: list[tuple[object, ...]],
    bad: list[tuple[int, tuple[object, ...]]],
    lines: list[tuple[str, str]],
    before: list[tuple[object, ...]] | None,
    system_users: bool,
    shrink: int,
) -> None:
    for at, row in bad:
        rows.insert(at, row)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "map").write_text("".join(f"{domain}: {account}\n" for domain, account in lines))
        query = "SELECT account, domain, login, uid FROM t ORDER BY n"

        def directory(url: str) -> object:
            return settings_from_mapping(
                {
                    "directory": {
                        "domain_map": str(folder / "map"),
                        "sql_url": url,
                        "sql_query": query,
                        "system_users": system_users,
                        "max_shrink_percent": shrink,
                    }
                }
            ).directory

        previous = None
        if before is not None:  # (conflicts stay with their previous owner, if a claimant)
            try:
                build(directory(_panel(folder, "before.db", before)), folder / "previous.db")
                previous = folder / "previous.db"
            except SourceError:
                pass
        now = directory(_panel(folder, "panel.db", rows))
        try:
            expected: tuple[str, object] = ("report", build(now, folder / "serial.db", previous))
        except SourceError as error:
            expected = ("error", str(error))
        forked = pool.submit(build_forked, now, folder / "forked.db", previous).result()
        event("refused: shrank" if "max_shrink_percent" in str(expected[1]) else expected[0])
        event(f"conflicts: {bool(expected[0] == 'report' and expected[1].conflicts)}")  # type: ignore[union-attr]
        event(f"previous: {previous is not None}")
        assert forked == expected
        if expected[0] == "report":
            assert snapshot_tables(folder / "forked.db") == snapshot_tables(folder / "serial.db")
        else:  # nothing is left behind
            assert not (folder / "forked.db").exists()
            assert {path.name for path in folder.iterdir()} <= {
                "map",
                "before.db",
                "panel.db",
                "previous.db",
            }


def test_the_hostile_logins_are_all_there(pool: ProcessPoolExecutor, tmp_path: Path) -> None:
    """One build of the hard cases at once, read back through the snapshot: a login
    claimed twice by one account and by two (with and without a previous owner), odd
    but printable logins, casefold twins; then logins holding a line break, a control
    or a bidi override: bad rows, named, and no snapshot."""
    rows = [
        ("acme", "a.example", "Bob", None),
        ("acme", None, "bob", None),  # (the same account again: its first claim holds)
        ("web1", None, "BOB", None),  # (a second account: a conflict)
        ("web1", None, "a b", None),
        ("initech", None, "ünï", None),
        ("initech", None, "Straße", None),
        ("acme", None, "STRASSE", None),
        ("web1", None, "évil", None),
    ]
    url = _panel(tmp_path, "panel.db", rows)
    now = settings_from_mapping(
        {"directory": {"sql_url": url, "sql_query": "SELECT account, domain, login, uid FROM t"}}
    ).directory
    kind, report = pool.submit(build_forked, now, tmp_path / "forked.db", None).result()
    assert kind == "report"
    assert [(c.kind, c.key, c.claimants, c.kept) for c in report.conflicts] == [
        ("login", "bob", ("acme", "web1"), None),
        ("login", "strasse", ("acme", "initech"), None),
    ]
    snapshot = Snapshot(tmp_path / "forked.db")
    try:
        assert snapshot.owner("login", "bob") is None
        assert snapshot.owner("login", "a b") == "web1"
        assert str(snapshot.origin_of("login", "a b")).endswith("row 4")
        assert snapshot.owner("login", "ünï") == "initech"
        web1 = snapshot.record("web1")
        assert web1 is not None and web1.logins == ("a b", "évil")
        initech = snapshot.record("initech")
        assert initech is not None and initech.logins == ("ünï",)
        assert report.logins == 3
    finally:
        snapshot.close()
    rows += [("web1", None, "a\nb", None), ("initech", None, "nul\x00", None)]
    rows += [("web1", None, "\u202eevil", None)]
    now = settings_from_mapping(
        {
            "directory": {
                "sql_url": _panel(tmp_path, "odd.db", rows),
                "sql_query": "SELECT account, domain, login, uid FROM t",
            }
        }
    ).directory
    kind, error = pool.submit(build_forked, now, tmp_path / "odd-forked.db", None).result()
    assert kind == "error"
    for row in (9, 10, 11):
        assert f"row {row}: login " in str(error), error
    assert not (tmp_path / "odd-forked.db").exists()
