"""The directory sources' parsing: every bad line named by its number, nothing half-read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.directory.sources import (
    SourceError,
    check_account_id,
    parse_domain_map,
    read_domain_map,
)
from sendwarden.directory.sql import parse_sql_url, redacted, rows_to_data


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
