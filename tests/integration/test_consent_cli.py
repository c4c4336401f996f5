"""``sendwarden consent import|show|verify|grant|revoke`` against real ledgers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sendwarden.cli import main
from sendwarden.consent.store import parse_database_url
from tests.integration.test_consent_store import tamper
from tests.support.ports import free_port
from tests.support.sendwarden_config import DEFAULT_ACCOUNT, write_config

CSV = (
    "recipient,consented_at,method,source,ip,confirmed_at,evidence,kind\n"
    "alice@Example.org,2026-03-01T10:15:02Z,double-opt-in,https://acme.example/signup,"
    "198.51.100.7,2026-03-01T10:17:44Z,Message-ID <c1@acme.example>,granted\n"
    "alice@example.org,2026-05-02T08:00:00Z,unsubscribe-link,,,,,revoked\n"
    "bob@example.org,2026-03-03,single-opt-in,newsletter form,,,,\n"
)


@pytest.fixture
def config(tmp_path: Path, consent_database_url: str) -> str:
    path = write_config(
        tmp_path / "sendwarden.toml",
        socket="unix:/run/sendwarden-test/milter.sock",
        redis_url="redis://127.0.0.1:6399/0",
        consent_database=consent_database_url,
        accounts=[DEFAULT_ACCOUNT, {"id": "beta"}],
    )
    return str(path)


def sendwarden(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def write_csv(tmp_path: Path, text: str = CSV, name: str = "list.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_then_show(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = sendwarden(
        capsys, "consent", "import", write_csv(tmp_path), "--account", "acme", "-c", config
    )
    assert (status, err) == (0, "")
    assert out == "imported 3 consent records for account acme from list.csv\n"

    status, out, _ = sendwarden(capsys, "consent", "show", "alice@EXAMPLE.org", "-c", config)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "alice@example.org — account acme"
    assert lines[1] == (
        "  2026-03-01 10:15:02Z  GRANTED   double-opt-in via https://acme.example/signup"
        " (IP 198.51.100.7)"
    )
    assert lines[2].strip() == (
        "confirmed 2026-03-01 10:17:44Z; evidence: Message-ID <c1@acme.example>"
    )
    assert lines[3].strip().startswith("recorded by import:list.csv by ")
    assert lines[4] == "  2026-05-02 08:00:00Z  REVOKED   unsubscribe-link"
    assert lines[6] == "  Current status: no consent (revoked 2026-05-02)"
    assert lines[7] == "Ledger chain: verified (3 events checked)"

    status, out, _ = sendwarden(
        capsys, "consent", "show", "bob@example.org", "--account", "acme", "--json", "-c", config
    )
    data = json.loads(out)
    assert status == 0 and data["recipient"] == "bob@example.org"
    assert data["accounts"][0]["status"][0]["consent"] is True
    assert data["chain"]["ok"] is True


def test_a_progress_bar_on_a_terminal(
    config: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, _, err = sendwarden(
        capsys, "consent", "import", write_csv(tmp_path), "--account", "acme", "-c", config
    )
    assert status == 0 and "importing: 100%" in err
    status, _, err = sendwarden(capsys, "consent", "verify", "-c", config)
    assert status == 0 and "verifying" in err


def test_show_an_unknown_recipient(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sendwarden(capsys, "consent", "show", "nobody@example.org", "-c", config)
    assert (status, out) == (1, "nobody@example.org: no consent records\n")


def test_import_with_bad_rows_reports_each_and_imports_nothing(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = CSV + "carol,2026-03-01,,,,,,\ndave@example.org,soon,,,,,,\n"
    status, out, err = sendwarden(
        capsys, "consent", "import", write_csv(tmp_path, bad), "--account", "acme", "-c", config
    )
    assert status == 1 and out == ""
    assert err.splitlines() == [
        "list.csv: line 5: recipient 'carol' is not an email address with a valid domain",
        "list.csv: line 6: occurred_at 'soon' is not a valid ISO 8601 time"
        " (e.g. 2026-03-01T10:15:02Z)",
        "sendwarden consent: list.csv: 2 of 5 rows are bad; nothing was imported "
        "(fix them and import the whole file again)",
    ]
    status, out, _ = sendwarden(capsys, "consent", "show", "bob@example.org", "-c", config)
    assert status == 1 and "no consent records" in out


def test_import_with_wrong_columns(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path, "email,date\nalice@example.org,2026-03-01\n")
    status, _, err = sendwarden(
        capsys, "consent", "import", path, "--account", "acme", "-c", config
    )
    assert status == 1
    assert "line 1: unknown column 'email'" in err and "nothing was imported" in err


def test_import_refuses_an_unknown_account_and_a_missing_file(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = sendwarden(
        capsys, "consent", "import", write_csv(tmp_path), "--account", "acmee", "-c", config
    )
    assert status == 2 and "no account with id 'acmee'" in err
    status, _, err = sendwarden(
        capsys, "consent", "import", str(tmp_path / "nope.csv"), "--account", "acme", "-c", config
    )
    assert status == 1 and "cannot read" in err and "No such file" in err


def test_staff_grant_and_revoke(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sendwarden(
        capsys,
        "consent", "grant", "Carol@Example.org", "--account", "beta", "--method", "in-person",
        "--at", "2026-04-01T09:00:00Z", "--source", "shop counter", "--list", "news",
        "--evidence", "signed form #12", "-c", config,
    )  # fmt: skip
    assert status == 0
    assert out == "recorded: Carol@example.org granted for account beta (list news)\n"
    status, out, _ = sendwarden(
        capsys, "consent", "revoke", "Carol@example.org", "--account", "beta", "-c", config
    )
    assert status == 0 and "revoked for account beta" in out
    status, out, _ = sendwarden(capsys, "consent", "show", "Carol@example.org", "-c", config)
    assert "GRANTED   in-person via shop counter [list news]" in out
    assert "REVOKED   staff" in out and "recorded by staff:" in out
    assert "list news: no consent (revoked" in out


def test_staff_grant_is_validated(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = sendwarden(
        capsys,
        "consent", "grant", "carol@example.org", "--account", "beta",
        "--method", "double-opt-in", "-c", config,
    )  # fmt: skip
    assert status == 1 and "double-opt-in needs confirmed_at" in err
    status, _, err = sendwarden(
        capsys,
        "consent", "grant", "carol", "--account", "beta", "--method", "in-person", "-c", config,
    )  # fmt: skip
    assert status == 1 and "not an email address" in err


def test_verify_and_tampering(
    config: str,
    consent_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sendwarden(capsys, "consent", "import", write_csv(tmp_path), "--account", "acme", "-c", config)
    status, out, _ = sendwarden(capsys, "consent", "verify", "-c", config)
    assert status == 0
    assert out.splitlines()[0] == "Ledger chain: verified (3 events checked)"
    assert out.splitlines()[1].startswith("Chain head: event #3 sha256 ")

    tamper(consent_database_url, "UPDATE consent_events SET kind = 'granted' WHERE seq = 2")
    status, out, _ = sendwarden(capsys, "consent", "verify", "-c", config)
    assert status == 1
    assert out == (
        "Ledger chain: BROKEN at event #2: its contents do not match its hash "
        "(the row was edited)\n"
    )
    status, out, _ = sendwarden(capsys, "consent", "verify", "--json", "-c", config)
    assert json.loads(out)["first_broken_seq"] == 2
    status, out, _ = sendwarden(capsys, "consent", "show", "alice@example.org", "-c", config)
    assert status == 1 and "Ledger chain: BROKEN at event #2" in out


def test_an_unavailable_database_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path / "sendwarden.toml",
        socket="unix:/run/sendwarden-test/milter.sock",
        redis_url="redis://127.0.0.1:6399/0",
        consent_database=f"postgresql://postgres@127.0.0.1:{free_port()}/consent",
        consent={"timeout_ms": 200},
    )
    status, _, err = sendwarden(capsys, "consent", "verify", "-c", str(path))
    assert status == 3 and "store unavailable: consent database" in err


def test_the_installed_command_reads_standard_input(config: str, consent_database_url: str) -> None:
    if parse_database_url(consent_database_url)[0] != "sqlite":
        pytest.skip("one backend is enough for the console script")
    command = [str(Path(sys.executable).parent / "sendwarden"), "consent"]
    done = subprocess.run(
        [*command, "import", "-", "--account", "acme", "-c", config],
        input=CSV.encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", "no progress bar when stderr is not a terminal"
    assert b"from standard input" in done.stdout
    shown = subprocess.run(
        [*command, "show", "bob@example.org", "-c", config], capture_output=True, check=False
    )
    assert shown.returncode == 0 and b"recorded by import:standard input by " in shown.stdout
