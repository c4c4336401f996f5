"""DKIM keys for real: ``sendwarden dkim keygen`` (openssl via dkimpy's dknewkey), key
files checked at config load, and a signature verified against the printed TXT
record served by a DNS server on loopback."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
import stat
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
import redis

from sendwarden.checks.base import Check
from sendwarden.checks.identity import IdentityCheck
from sendwarden.cli import main
from sendwarden.config import ConfigError, load_settings
from sendwarden.dkim.signer import DkimSigner, SigningKey, headers_after_changes
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.runtime import build_checks
from tests.support.dns_server import TxtDnsServer
from tests.support.ports import free_port

ACCOUNT = """
[[accounts]]
id = "acme"
logins = ["alice@acme.example"]
domains = ["acme.example"]
"""


def keygen(
    key_file: Path, domain: str = "acme.example", selector: str = "s2025", owner: str = ""
) -> str:
    """Run the real CLI in a subprocess; its stdout."""
    extra = ["--owner", owner] if owner else []
    done = subprocess.run(
        [sys.executable, "-m", "sendwarden", "dkim", "keygen", domain, "--selector", selector,
         "--key-file", str(key_file), *extra],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def zone_strings(output: str) -> list[str]:
    """The quoted strings of the printed zone-file line."""
    (line,) = [line for line in output.splitlines() if "._domainkey." in line and "TXT" in line]
    return re.findall(r'"([^"]*)"', line)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dkim")


@pytest.fixture(scope="module")
def generated(key_dir: Path) -> tuple[Path, str]:
    key_file = key_dir / "acme.example.s2025.key"
    return key_file, keygen(key_file)


def test_keygen_writes_a_private_key_readable_by_its_owner_only(
    generated: tuple[Path, str],
) -> None:
    key_file, output = generated
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key_file.read_bytes()
    assert "s2025._domainkey.acme.example. IN TXT" in output
    assert f'key_file = "{key_file}"' in output
    strings = zone_strings(output)
    assert all(len(part) <= 255 for part in strings) and len(strings) == 2  # 2048-bit key
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=MIIB")


def test_keygen_refuses_to_overwrite(
    generated: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    key_file, _ = generated
    before = key_file.read_bytes()
    assert (
        main(["dkim", "keygen", "acme.example", "--selector", "s2", "--key-file", str(key_file)])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert key_file.read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files away")
def test_keygen_gives_the_key_to_the_milters_user(key_dir: Path) -> None:
    key_file = key_dir / "owned" / "k.key"
    output = keygen(key_file, selector="owned", owner="postfix")
    postfix = pwd.getpwnam("postfix")
    for path in (key_file, key_file.parent):  # the directory keygen created too
        assert (path.stat().st_uid, path.stat().st_gid) == (postfix.pw_uid, postfix.pw_gid)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "owner postfix" in output


def test_keygen_with_an_unknown_owner_writes_nothing(
    key_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = key_dir / "nobody-here.key"
    args = ["dkim", "keygen", "acme.example", "--selector", "s", "--key-file", str(key_file)]
    assert main([*args, "--owner", "no-such-user-x"]) == 2
    assert "no user 'no-such-user-x'" in capsys.readouterr().err
    assert not key_file.exists()


def test_keygen_rejects_a_bad_selector_or_domain(
    key_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dkim", "keygen", "acme.example", "--selector", "a_b", "--key-file",
                 str(key_dir / "x.key")]) == 2  # fmt: skip
    assert "not a DKIM selector" in capsys.readouterr().err
    assert main(["dkim", "keygen", "bad..example", "--selector", "s", "--key-file",
                 str(key_dir / "y.key")]) == 2  # fmt: skip
    assert not (key_dir / "x.key").exists() and not (key_dir / "y.key").exists()


def test_signature_verifies_against_the_published_record(generated: tuple[Path, str]) -> None:
    key_file, output = generated
    settings = load_settings(_config(key_file.parent, key_file))
    with TxtDnsServer() as dns_server:
        dns_server.publish("s2025._domainkey.acme.example", zone_strings(output))
        txn = Transaction(
            client=Client(ipaddress.ip_address("203.0.113.5")),
            login="alice@acme.example",
            mail_from="alice@acme.example",
        )
        txn.account, txn.account_source = settings.account("acme"), "login"
        txn.headers = [("From", "alice@acme.example"), ("Subject", "hello"), ("To", "b@x.example")]
        signer = DkimSigner(SigningKey.from_config(entry) for entry in settings.dkim)
        signer.at_body(txn, b"Hi Bob.\r\n")
        signer.at_eom(txn)
        lines = [f"{name}: {value}" for name, value in headers_after_changes(txn)]
        wire = "\r\n".join(line.replace("\n", "\r\n") for line in lines).encode()
        wire += b"\r\n\r\nHi Bob.\r\n"
        assert dkim.verify(wire, dnsfunc=dns_server.dnsfunc)
        assert "s2025._domainkey.acme.example." in dns_server.queries
        assert not dkim.verify(wire.replace(b"Hi Bob", b"Hi Eve"), dnsfunc=dns_server.dnsfunc)


def test_records_command_prints_the_configured_keys(
    generated: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    key_file, output = generated
    assert main(["dkim", "records", "-c", str(_config(key_file.parent, key_file))]) == 0
    printed = capsys.readouterr().out
    assert zone_strings(printed) == zone_strings(output)


# -- key files are checked when the config loads ---------------------------------------


def _config(directory: Path, key_file: Path | str, table: str = "[dkim]") -> Path:
    path = directory / "sendwarden.toml"
    path.write_text(
        f'{table}\ndomain = "ACME.example"\nselector = "s2025"\nkey_file = "{key_file}"\n'
        f'[consent]\ndatabase = "sqlite:///{directory / "consent.db"}"\n' + ACCOUNT
    )
    return path


def test_single_table_and_array_of_tables(generated: tuple[Path, str], tmp_path: Path) -> None:
    key_file, _ = generated
    for table in ("[dkim]", "[[dkim]]"):
        (entry,) = load_settings(_config(tmp_path, key_file, table)).dkim
        assert (entry.domain, entry.selector, entry.key_file.path) == (
            "acme.example",
            "s2025",
            str(key_file),
        )
        assert "PRIVATE" not in repr(entry)  # the key never lands in a log line


def test_missing_key_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_config(tmp_path, tmp_path / "missing.key"))
    assert raised.value.key == "dkim[ACME.example].key_file"
    assert "does not exist" in str(raised.value)
    assert "sendwarden dkim keygen" in str(raised.value)


def test_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    (directory / "k.key").write_text("x")
    if os.geteuid() == 0:
        # root reads any file: a directory in its place fails the same read.
        target: Path = directory
    else:
        (directory / "k.key").chmod(0)
        target = directory / "k.key"
    with pytest.raises(ConfigError, match="cannot read key file"):
        load_settings(_config(tmp_path, target))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a key", "is not a PEM RSA private key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
         "is not a PEM RSA private key"),
    ],
)  # fmt: skip
def test_garbage_key_file_is_a_config_error(tmp_path: Path, content: bytes, problem: str) -> None:
    key_file = tmp_path / "bad.key"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError, match=problem):
        load_settings(_config(tmp_path, key_file))


def test_key_file_with_windows_line_ends_loads(generated: tuple[Path, str], tmp_path: Path) -> None:
    key_file, _ = generated
    crlf = tmp_path / "crlf.key"
    crlf.write_bytes(key_file.read_bytes().replace(b"\n", b"\r\n"))
    (entry,) = load_settings(_config(tmp_path, crlf)).dkim
    assert SigningKey.from_config(entry).domain == "acme.example"


def test_weak_key_is_a_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "weak.key"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key_file), "512"], check=True, capture_output=True
    )
    with pytest.raises(ConfigError, match="512-bit key"):
        load_settings(_config(tmp_path, key_file))


def test_two_keys_for_one_domain_are_a_config_error(
    generated: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, _ = generated
    entry = f'[[dkim]]\ndomain = "acme.example"\nselector = "s"\nkey_file = "{key_file}"\n'
    path = tmp_path / "two.toml"
    path.write_text(entry + entry + ACCOUNT)
    with pytest.raises(ConfigError, match="two keys"):
        load_settings(path)


def test_check_config_reports_the_bad_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "-c", str(_config(tmp_path, tmp_path / "gone.key"))]) == 2
    assert "dkim[ACME.example].key_file" in capsys.readouterr().err


def test_the_signer_runs_last_and_only_when_a_key_is_configured(
    generated: tuple[Path, str], tmp_path: Path
) -> None:
    """No key: no signer, so the body step is not negotiated for it."""
    key_file, _ = generated
    client = redis.Redis(port=free_port())  # never contacted while building
    with_key = load_settings(_config(tmp_path, key_file))
    without_key = dataclasses.replace(with_key, dkim=())
    checks = build_checks(with_key, client)
    assert isinstance(checks[-1], DkimSigner)
    assert [type(check) for check in checks].count(DkimSigner) == 1
    assert not any(isinstance(check, DkimSigner) for check in build_checks(without_key, client))
    assert any(isinstance(check, IdentityCheck) for check in checks)


def test_the_body_step_only_when_a_check_reads_the_body(
    generated: tuple[Path, str], tmp_path: Path
) -> None:
    """With the checks a configuration really builds: the body is asked for (and the
    adapter negotiates the body step) only when the attachment cap is on or a DKIM key
    is configured; and every check that asks for it reads it."""
    key_file, _ = generated
    client = redis.Redis(port=free_port())  # never contacted while building
    with_key = load_settings(_config(tmp_path, key_file))
    no_cap = dataclasses.replace(with_key.policy, check_attachments=False)
    for keys, policy, wanted in (
        ((), no_cap, False),
        (with_key.dkim, no_cap, True),
        ((), with_key.policy, True),
        (with_key.dkim, with_key.policy, True),
    ):
        settings = dataclasses.replace(with_key, dkim=keys, policy=policy)
        checks = build_checks(settings, client)
        assert Pipeline(settings, checks).needs_body is wanted
        for check in checks:
            if check.needs_body:
                assert type(check).at_body is not Check.at_body, check.name
