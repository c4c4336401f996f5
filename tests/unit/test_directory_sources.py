"""The directory sources' parsing: every bad line named by its number, nothing half-read."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.directory.snapshot import Snapshot, write_snapshot
from sendwarden.directory.sources import (
    _PLAIN_DOMAIN,
    ClaimColumns,
    SourceData,
    SourceError,
    check_account_id,
    parse_domain_map,
    parse_map_line,
    read_domain_map,
)
from sendwarden.directory.sql import (
    _has_odd_character,
    _plain_domains,
    parse_sql_url,
    redacted,
    rows_one_by_one,
    rows_to_data,
)


def test_domain_map_lines_comments_and_blank_lines() -> None:
    text = (
        "# cPanel /etc/userdomains\n"
        "acme.example: acme\n"
        "\n"
        "  Shop.ACME.example :acme   # addon domain\n"
        "globex.example: globex\n"
        "*: nobody\n"
    )
    data = parse_domain_map(text, "map")
    assert data.domains == [
        ("acme.example", "acme", 2),
        ("shop.acme.example", "acme", 4),
        ("globex.example", "globex", 5),
    ]
    assert data.accounts == {"acme": 2, "globex": 5}
    assert any("line 6" in note for note in data.notes)


def test_domain_map_internationalised_domain_is_stored_as_a_label() -> None:
    data = parse_domain_map("bücher.example: books\n", "map")
    assert data.domains == [("xn--bcher-kva.example", "books", 1)]


def test_bad_lines_are_named_by_number() -> None:
    text = "acme.example: acme\nno colon here\nok.example: ok\n: nobody\nx.example: two words\n"
    with pytest.raises(SourceError) as error:
        parse_domain_map(text, "/etc/userdomains")
    message = str(error.value)
    assert message.startswith("/etc/userdomains: 3 bad line(s)")
    assert "line 2: expected 'domain: account'" in message
    assert "line 4:" in message and "line 5:" in message
    assert "line 1" not in message and "line 3" not in message


def test_a_file_cut_mid_line_is_refused() -> None:
    with pytest.raises(SourceError, match="last line has no newline"):
        parse_domain_map("acme.example: acme\nglobex.exa", "map")


def test_empty_map_is_empty() -> None:
    assert parse_domain_map("", "map").domains == []


def test_account_ids_that_would_break_keys_or_logs_are_refused() -> None:
    for bad in ("a{b}", "two words", "tab\there", "", "bell\x07"):
        with pytest.raises(ValueError):
            check_account_id(bad)
    assert check_account_id(" web_1-user.x ") == "web_1-user.x"


def test_unreadable_file_is_a_source_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SourceError, match="cannot read"):
        read_domain_map(str(tmp_path / "missing"))
    (tmp_path / "latin1").write_bytes(b"ok.example: ok\ncaf\xe9.example: x\n")
    with pytest.raises(SourceError, match="line 2: not UTF-8"):
        read_domain_map(str(tmp_path / "latin1"))


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    """Whatever a half-written or hostile file holds: a SourceError, never a crash, and
    every accepted claim is a normalised domain with a clean account name."""
    try:
        data = parse_domain_map(text, "map")
    except SourceError:
        return
    for domain, account, number in data.domains:
        assert domain == domain.strip().lower() and "@" not in domain
        assert check_account_id(account) == account
        assert 1 <= number <= text.count("\n")


#: Lines of a map: mostly ``domain: account`` with plain or odd parts (upper case, IDN,
#: a catch-all, stray colons, spaces, tabs, CR, comments, controls), and some junk.
_MAP_LINES = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                *("site1.example", "site2.example", "Shop.Example", "xn--pypal-4ve.example"),
                *("p\u0430ypal.example", "*", "", "a b", "..", "x" * 64 + ".example", "_x"),
            ]
        ),
        st.sampled_from([": ", ":", " : ", "\t:\t", " ", "::", ": : "]),
        st.sampled_from(["acme", "globex", "acme", "", "{x}", "a b", "\u00e9", "nobody"]),
        st.sampled_from(["", "", " ", "\r", " # note", "#", "\x00", "\u2028", "\x85"]),
    ).map("".join),
    st.text(max_size=8).filter(lambda line: "\n" not in line),
)


def map_line_by_line(text: str, label: str) -> SourceData:
    """The reference reading: every line through parse_map_line."""
    data = SourceData("domain_map", label)
    problems = []
    for number, raw in enumerate(text.split("\n")[:-1], start=1):
        try:
            pair = parse_map_line(raw)
        except ValueError as error:
            problems.append(f"line {number}: {error}")
            continue
        if pair is None:
            continue
        if pair[0] == "*":
            data.notes.append(f"line {number}: the catch-all '*' owns no domain; skipped")
            continue
        data.accounts.setdefault(pair[1], number)
        data.domains.append((pair[0], pair[1], number))
    if problems:
        raise SourceError(f"{len(problems)} bad line(s): {problems[:10]}")
    return data


@given(st.lists(_MAP_LINES, max_size=12).map(lambda lines: "".join(f"{x}\n" for x in lines)))
def test_the_fast_map_reading_is_the_line_by_line_one(text: str) -> None:
    """Plain lines are taken by one regular expression over the whole file; whatever
    that takes, and every line it does not, reads as parse_map_line reads it."""
    try:
        expected = map_line_by_line(text, "map")
    except SourceError:
        with pytest.raises(SourceError):
            parse_domain_map(text, "map")
        return
    data = parse_domain_map(text, "map")
    assert data.domains == expected.domains
    assert list(data.accounts.items()) == list(expected.accounts.items())
    assert data.notes == expected.notes


# -- SQL rows ------------------------------------------------------------------------


def test_sql_rows_give_domains_logins_and_settings() -> None:
    columns = ["account", "domain", "login", "recipients_per_hour", "allow_subdomains"]
    rows = [
        ("acme", "acme.example", None, 1000, 1),
        ("acme", None, "alice", None, None),
        ("globex", "globex.example", "bob@elsewhere.example", "200", "false"),
        ("acme", None, None, 800, "yes"),
    ]
    data = rows_to_data("sql", columns, rows)
    assert data.domains == [("acme.example", "acme", 1), ("globex.example", "globex", 3)]
    assert data.logins == [("alice", "acme", 2), ("bob@elsewhere.example", "globex", 3)]
    assert data.limits == {"acme": 800, "globex": 200}  # rows disagree: the lower holds
    assert data.allow_subdomains == {"acme": True, "globex": False}


def test_sql_bad_rows_are_named() -> None:
    rows = [("acme", "acme.example", "x"), (None, "b.example", None), ("c", "c.example", "0")]
    with pytest.raises(SourceError) as error:
        rows_to_data("sql db", ["account", "domain", "recipients_per_hour"], rows)
    assert "3 bad row(s)" in str(error.value)
    assert "row 3: recipients_per_hour must be at least 1" in str(error.value)
    assert "row 1: recipients_per_hour 'x' is not a whole number" in str(error.value)
    assert "row 2: account is NULL" in str(error.value)


def test_sql_columns_must_be_known() -> None:
    with pytest.raises(SourceError, match="column named 'account'"):
        rows_to_data("sql", ["acount", "domain"], [])
    with pytest.raises(SourceError, match="domian"):
        rows_to_data("sql", ["account", "domian"], [])


def test_sql_urls() -> None:
    assert parse_sql_url("postgresql://u@h/db") == "postgresql"
    assert parse_sql_url("mysql://admin:pw@localhost/psa") == "mysql"
    assert parse_sql_url("mariadb://admin@localhost/psa") == "mysql"
    assert parse_sql_url("sqlite:////var/lib/panel.db") == "sqlite"
    with pytest.raises(ValueError):
        parse_sql_url("oracle://x/y")
    assert redacted("mysql://admin:secret@localhost/psa") == "mysql://admin:***@localhost/psa"


#: Mostly values the column-by-column reading takes, some it must leave to the other.
_PLAIN_SQL_VALUES = st.sampled_from(
    [None, "acme", "globex", "site1.example", "alice@site1.example", "ftp7"]
)
_SQL_VALUES = st.one_of(
    *[_PLAIN_SQL_VALUES] * 8,
    st.sampled_from([" acme", "Acme.Example", "", " ", "a b", "{x}", "xn--pypal-4ve.example"]),
    st.integers(-2, 3),
    st.text(max_size=6),
)


@given(
    st.permutations(["account", "domain", "login"]).flatmap(
        lambda names: st.tuples(
            st.integers(1, 3).map(lambda width: names[:width]),
            st.lists(st.lists(_SQL_VALUES, min_size=3, max_size=3), max_size=6),
        )
    )
)
def test_the_column_by_column_sql_reading_is_the_row_by_row_one(
    shape: tuple[list[str], list[list[object]]],
) -> None:
    """Rows of plain values are read column by column; whatever the rows hold, the
    result (or the error naming the bad rows) is the row-by-row reading's."""
    columns, raw_rows = shape
    if "account" not in columns:
        columns = ["account", *columns[: len(columns) - 1]] if columns else ["account"]
    assert_read_alike(columns, [tuple(row[: len(columns)]) for row in raw_rows])


def assert_read_alike(columns: list[str], rows: list[tuple[object, ...]]) -> None:
    """Read column by column, the rows give what the row-by-row reading gives, or
    the same error naming the same bad rows."""
    try:
        expected = rows_one_by_one("sql", columns, rows)
    except SourceError as error:
        with pytest.raises(SourceError) as got:
            rows_to_data("sql", columns, rows)
        assert str(got.value) == str(error)
        return
    data = rows_to_data("sql", columns, rows)
    assert data.domains == expected.domains
    assert data.logins == expected.logins
    assert list(data.accounts.items()) == list(expected.accounts.items())


def test_plain_sql_rows_read_column_by_column() -> None:
    rows = [("acme", "acme.example", None), ("acme", None, "alice"), ("globex", None, "bob")]
    data = rows_to_data("sql", ["account", "domain", "login"], rows)
    assert data.domains == [("acme.example", "acme", 1)]
    assert data.logins == [("alice", "acme", 2), ("bob", "globex", 3)]
    assert data.accounts == {"acme": 1, "globex": 3}
    # Kept as the columns they were read in, for the merge to take as they are.
    assert isinstance(data.domains, ClaimColumns) and isinstance(data.logins, ClaimColumns)
    assert data.logins[1] == ("bob", "globex", 3) and data.logins[:1] == [("alice", "acme", 2)]
    assert data.logins.accounts == ["acme", "globex"] and data.logins.places == [2, 3]


@given(
    map_claims=st.lists(
        st.tuples(st.sampled_from(["site1.example", "acme.example"]), _PLAIN_SQL_VALUES),
        max_size=3,
    ),
    rows=st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex", "initech"]),
            st.sampled_from([None, "site1.example", "acme.example", "b.example"]),
            st.one_of(
                st.sampled_from([None, "alice@site1.example", "Alice@Site1.example", "ftp7"]),
                _SQL_VALUES,
            ),
        ),
        max_size=8,
    ),
)
def test_the_merge_of_sql_columns_is_the_merge_of_rows(
    tmp_path_factory: pytest.TempPathFactory,
    map_claims: list[tuple[str, object]],
    rows: list[tuple[object, ...]],
) -> None:
    """Whether the SQL rows were read into columns or one by one, the snapshot behind a
    map file that comes first is the same: owners, conflicts, records, places."""
    lines = "".join(f"{domain}: {account}\n" for domain, account in map_claims if account)
    columns = ["account", "domain", "login"]
    try:
        slow = rows_one_by_one("sql", columns, rows)
    except SourceError:
        return  # the same error either way: test_the_column_by_column_sql_reading_...
    fast = rows_to_data("sql", columns, rows)
    tmp = tmp_path_factory.mktemp("merge")
    snapshots = []
    for name, sql in (("fast.db", fast), ("slow.db", slow)):
        write_snapshot(tmp / name, [parse_domain_map(lines, "map"), sql])
        snapshots.append(Snapshot(tmp / name))
    assert _contents(snapshots[0], rows) == _contents(snapshots[1], rows)


def _contents(snapshot: Snapshot, rows: list[tuple[object, ...]]) -> object:
    keys = {str(value) for row in rows for value in row[1:] if value is not None}
    keys |= {"site1.example", "acme.example", "alice@site1.example"}
    try:
        return (
            snapshot.counts(),
            snapshot.conflicts(),
            [snapshot.record(account) for account in snapshot.account_ids()],
            [
                (snapshot.owner(kind, key), snapshot.origin_of(kind, key))
                for kind in ("domain", "login")
                for key in sorted(keys)
            ],
        )
    finally:
        snapshot.close()


@pytest.mark.parametrize("odd", ["", " ", "a ", " a", "a\u00a0", "\u2003a", "a\nb", "\n", "a\x1c"])
@pytest.mark.parametrize("others", [0, 1, 3])
def test_a_login_with_whitespace_around_it_is_read_row_by_row(odd: str, others: int) -> None:
    """Whatever its place among plain logins, the odd one reads as one row at a time
    reads it: stripped, refused when empty."""
    rows = [("acme", None, f"user{n}") for n in range(others)] + [("acme", None, odd)]
    assert_read_alike(["account", "domain", "login"], rows)


#: Text near the edge of a plain domain: labels of 0 to 70 characters (63 is the most
#: allowed) between dots and line breaks, upper case, whitespace, controls, non-ASCII.
_DOMAIN_PIECES = st.one_of(
    st.sampled_from(["a", "0", "_", "-", ".", "\n", "A", " ", "\t", "\x1c", "\xe9", "\u0131"]),
    (st.sampled_from([0, 1, 62, 63, 64, 65]) | st.integers(0, 70)).map(lambda n: "x" * n),
    st.characters(max_codepoint=0x17F),
)
#: Mostly plain labels (some empty, some too long), now and then anything.
_LABELS = st.one_of(
    *[st.sampled_from(["a", "site1", "x-y_z", "0", ""])] * 3,
    st.sampled_from([62, 63, 64, 65]).map(lambda n: "x" * n),
    _DOMAIN_PIECES,
)
_DOMAIN_TEXTS = st.one_of(
    st.lists(_DOMAIN_PIECES, max_size=12).map("".join),
    st.lists(st.tuples(st.sampled_from([".", "\n"]), _LABELS), min_size=1, max_size=8).map(
        lambda pieces: "".join(separator + piece for separator, piece in pieces)[1:]
    ),
)


@given(_DOMAIN_TEXTS)
def test_the_fast_plain_domain_check_is_the_regular_expression(joined: str) -> None:
    """Domains one a line are plain exactly when every line matches the plain domain's
    regular expression (what the column-by-column reading takes as it is)."""
    pattern = _PLAIN_DOMAIN.pattern
    expected = re.fullmatch(rf"(?:{pattern}\n)*{pattern}", joined) is not None
    assert _plain_domains(joined) is expected


@given(
    st.lists(
        _DOMAIN_PIECES
        | st.sampled_from(
            ["\x0b", "\x0c", "\r", "\x85", "\u2003", "\x00", "\x1c", "\u200b", "\xa0"]
        )
    ).map("".join)
)
def test_the_fast_odd_character_check_is_the_plain_reading(joined: str) -> None:
    """Whitespace other than a line break, or a character that does not print, is
    found as the regular expression and ``str.isprintable`` find them."""
    assert _has_odd_character(joined) is _odd_by_the_slow_reading(joined)


def _odd_by_the_slow_reading(text: str) -> bool:
    return re.search(r"[^\S\n]", text) is not None or not text.replace("\n", "").isprintable()


def test_each_character_is_whitespace_to_both_checks_alike() -> None:
    """Every character up to U+3000, alone among plain ones, in a label and between
    labels: the fast checks and the regular expressions agree."""
    pattern = _PLAIN_DOMAIN.pattern
    for character in map(chr, range(0x3001)):
        text = f"ab{character}cd"
        assert _has_odd_character(text) is _odd_by_the_slow_reading(text), repr(character)
        for domain in (f"a{character}b.example", f"ab.{character}.example"):
            expected = re.fullmatch(rf"(?:{pattern}\n)*{pattern}", domain) is not None
            assert _plain_domains(domain) is expected, repr(domain)


@pytest.mark.parametrize(
    ("domain", "plain"),
    [
        ("site1.example", True),
        (f"{'a' * 63}.example", True),
        (f"{'a' * 64}.example", False),
        ("a..example", False),
        (".example", False),
        ("example.", False),
        ("Example.com", False),
        ("exämple.com", False),
    ],
)
def test_plain_domains_at_their_edges(domain: str, plain: bool) -> None:
    assert _plain_domains(f"acme.example\n{domain}\nglobex.example") is plain
    assert _plain_domains(domain) is plain


@pytest.mark.parametrize("odd", ["acme\nbeta", "\nacme", "acme\n", "acme\n\nbeta", "acme\x1c"])
@pytest.mark.parametrize("others", [0, 1, 3])
def test_an_account_id_holding_a_line_break_is_read_row_by_row(odd: str, others: int) -> None:
    """An account id with a line break inside is refused by the row-by-row reading;
    read column by column, it must not pass as two plain ids joined."""
    rows = [(f"user{n}", f"d{n}.example", None) for n in range(others)]
    rows.append((odd, "odd.example", None))
    assert_read_alike(["account", "domain", "login"], rows)


@pytest.mark.parametrize(
    "odd", ["a.example\nb.example", "a.example\tb", "a.exam\x00ple", "a.example\u2028b"]
)
@pytest.mark.parametrize("others", [0, 1, 3])
def test_a_domain_holding_a_line_break_or_control_character_is_a_bad_row(
    odd: str, others: int
) -> None:
    """A domain with whitespace or a control character inside is a bad row (named),
    read column by column or row by row alike, never a claim of its own."""
    rows = [("acme", f"d{n}.example", None) for n in range(others)] + [("acme", odd, None)]
    with pytest.raises(SourceError, match=f"row {others + 1}"):
        rows_one_by_one("sql", ["account", "domain", "login"], rows)
    assert_read_alike(["account", "domain", "login"], rows)


def test_a_mapped_domain_holding_a_tab_is_a_bad_line() -> None:
    with pytest.raises(SourceError, match="line 2"):
        parse_domain_map("acme.example: acme\na.example\tb.example: acme\n", "map")


@pytest.mark.parametrize(
    "odd", ["ops\nroot", "ops\x00root", "ops\troot", "ops\u2028root", "ops\u200broot", "a\x85b"]
)
@pytest.mark.parametrize("others", [0, 1, 3])
def test_a_login_holding_a_character_that_does_not_print_is_a_bad_row(
    odd: str, others: int
) -> None:
    """A login with a line break, a control, format or separator character inside is
    a bad row (named), read column by column or row by row alike: kept, it would read
    as two logins wherever an account's logins are listed one a line."""
    rows = [("acme", None, f"login{n}") for n in range(others)] + [("acme", None, odd)]
    with pytest.raises(SourceError, match=f"row {others + 1}: login .* does not print"):
        rows_one_by_one("sql", ["account", "domain", "login"], rows)
    assert_read_alike(["account", "domain", "login"], rows)


@given(
    st.lists(
        st.text(
            st.sampled_from(["a", "B", "@", ".", " ", "\n", "\t", "\x00", "\xa0", "\u200b", "é"]),
            max_size=6,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_odd_logins_read_alike_both_ways(logins: list[str]) -> None:
    """Whatever the logins hold, the column-by-column reading gives what the row-by-row
    one gives (or the same error, naming the same rows); a login kept prints."""
    rows = [(f"acct{n % 2}", None, login) for n, login in enumerate(logins)]
    assert_read_alike(["account", "domain", "login"], rows)
    with contextlib.suppress(SourceError):
        data = rows_to_data("sql", ["account", "domain", "login"], rows)
        assert all(login.isprintable() for login, _, _ in data.logins)
