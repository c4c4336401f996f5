"""``sendwarden check-config``, ``account show`` and ``account which`` on a directory."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.cli import main
from sendwarden.directory.explain import shown
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import dumps_toml


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Path:
    (tmp_path / "userdomains").write_text(
        "# cPanel\nacme.example: acme\nshop.example: acme\nglobex.example: globex\n"
    )
    path = tmp_path / "sendwarden.toml"
    path.write_text(
        dumps_toml(
            {
                "redis": {"url": redis_server.url},
                "consent": {"database": f"sqlite:///{tmp_path / 'consent.db'}"},
                "directory": {"domain_map": str(tmp_path / "userdomains"), "system_users": True},
                "accounts": [
                    {"id": "acme", "recipients_per_hour": 900, "networks": ["192.0.2.0/24"]},
                    {"id": "ftp", "logins": ["ftpuser"]},
                ],
            }
        )
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_reads_the_sources(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert "the directory has" in out and "3 domains" in out
    userdomains = config.parent / "userdomains"
    userdomains.write_text(userdomains.read_text() + "oops\n")
    code, _, err = run(capsys, "check-config", "-c", str(config))
    assert code == 2
    assert "directory:" in err and "line 5: expected 'domain: account'" in err
    # A service's start leaves the sources to the milter (deploy/sendwarden.service).
    code, out, _ = run(capsys, "check-config", "--skip-directory", "-c", str(config))
    assert code == 0 and "the directory's sources not read" in out


def test_account_show_says_where_it_came_from_and_what_it_owns(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "account", "show", "acme", "-c", str(config))
    assert code == 0, out
    userdomains = config.parent / "userdomains"
    assert f"from: domain_map {userdomains} line 2" in out
    assert "overridden by: [[accounts]] in the config (networks, recipients_per_hour)" in out
    assert f"acme.example  (domain_map {userdomains} line 2)" in out
    assert f"shop.example  (domain_map {userdomains} line 3)" in out
    assert "192.0.2.0/24" in out
    assert "recipients_per_hour: 900 (the account's own)" in out
    assert "account acme: active" in out
    code, out, _ = run(capsys, "account", "show", "root", "-c", str(config))
    assert "from: system_users (password database, uid 0)" in out
    assert "0 (Unix user root)" in out
    code, _, err = run(capsys, "account", "show", "nosuch", "-c", str(config))
    assert code == 2 and "no account with id 'nosuch'" in err


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (
            "info@shop.example",
            ["SASL login info@shop.example: account acme", "line 3", "need no listing"],
        ),
        ("FTPUSER", ["SASL login FTPUSER: account ftp", "[[accounts]] in the config"]),
        ("0", ["uid 0 (sendmail(1), PHP mail()): account root", "its Unix user is root"]),
        ("192.0.2.9", ["client address 192.0.2.9 (no login): account acme", "192.0.2.0/24"]),
        ("203.0.113.1", ["client address 203.0.113.1 (no login): no account"]),
        (
            "x@unknown.example",
            [
                "SASL login x@unknown.example: login:x@unknown.example",
                "an account of its own at the default limits",
                "envelope sender x@unknown.example: its domain belongs to no account",
            ],
        ),
        ("4000000", ["uid 4000000 (sendmail(1), PHP mail()): uid:4000000", "of its own"]),
        ("127.0.0.9", ["127.0.0.9 (no login): host:127.0.0.9", "a trusted host"]),
    ],
)
def test_account_which_says_which_account_and_why(
    config: Path, capsys: pytest.CaptureFixture[str], identity: str, expected: list[str]
) -> None:
    code, out, _ = run(capsys, "account", "which", identity, "-c", str(config))
    assert code == 0
    for text in expected:
        assert text in out, out


def test_api_tokens_for_accounts_only_the_directory_knows(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`api token create --account` finds an account the sources give (globex is in no
    [[accounts]] table), a config with its token loads, and check-config, which reads
    the sources, refuses a token for an account neither the config nor they know."""
    code, out, err = run(capsys, "api", "-c", str(config), "token", "create", "--account", "globex")
    assert code == 0, err
    assert 'account = "globex"' in out and "swt_" in out
    code, out, err = run(capsys, "api", "-c", str(config), "token", "create", "--account", "ghost")
    assert code == 2 and "swt_" not in out and "no account with id 'ghost'" in err
    text = config.read_text()
    config.write_text(
        text + f'\n[[api.tokens]]\nname = "globex"\naccount = "globex"\nsha256 = "{"a" * 64}"\n'
    )
    code, out, err = run(capsys, "check-config", "-c", str(config))
    assert code == 0, err
    config.write_text(
        text + f'\n[[api.tokens]]\nname = "ghost"\naccount = "ghost"\nsha256 = "{"b" * 64}"\n'
    )
    code, out, err = run(capsys, "check-config", "-c", str(config))
    assert code == 2 and "api.tokens[ghost].account" in err and "'ghost'" in err


def test_an_odd_login_is_named_on_one_line_never_read_as_two(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A login holding a line break (the customer's text, in the provider's database)
    is a bad row, named on one line; staff asking about such a login read it quoted on
    one line, never as two; an SQL origin reads "sql URL row N"."""
    database = tmp_path / "billing.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE logins (account TEXT, login TEXT)")
        connection.executemany(
            "INSERT INTO logins VALUES (?, ?)", [("acme", "plain"), ("acme", "ops\nroot")]
        )
    path = tmp_path / "sendwarden.toml"
    path.write_text(
        dumps_toml(
            {
                "redis": {"url": redis_server.url},
                "consent": {"database": f"sqlite:///{tmp_path / 'consent.db'}"},
                "directory": {
                    "sql_url": f"sqlite:///{database}",
                    "sql_query": "SELECT account, login FROM logins",
                },
            }
        )
    )
    code, out, err = run(capsys, "account", "show", "acme", "-c", str(path))
    assert code == 2 and not out
    assert "row 2: login 'ops\\nroot' holds a character that does not print" in err, err
    with sqlite3.connect(database) as connection:
        connection.execute("DELETE FROM logins WHERE login != 'plain'")
    code, out, _ = run(capsys, "account", "show", "acme", "-c", str(path))
    assert code == 0, out
    assert f"    plain  (sql sqlite:///{database} row 1)" in out.splitlines(), out
    code, out, _ = run(capsys, "account", "which", "ops\nroot", "-c", str(path))
    assert code == 0
    assert out.splitlines()[0] == "SASL login 'ops\\nroot': 'login:ops\\nroot'", out
    assert not any(line.startswith("root") for line in out.splitlines()), out


@given(st.text())
def test_shown_identities_are_one_printable_line(text: str) -> None:
    """What staff read of an identity is one line, and says exactly what it was."""
    printed = shown(text)
    assert printed.isprintable() and "\n" not in printed
    assert printed == text if text.isprintable() else ast.literal_eval(printed) == text
