"""check-config catches what cannot run and warns about what is likely a mistake
(issue 14.5). The --as-user checks run in tests/e2e/test_install.py, as a real
unprivileged user against the installed program."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendwarden.cli import main
from tests.support.sendwarden_config import build_config, dumps_toml


def write(tmp_path: Path, **tables: dict[str, object]) -> str:
    config = build_config(socket="inet:8890@127.0.0.1", redis_url="redis://127.0.0.1:6379/0",
                          consent_database=f"sqlite:///{tmp_path / 'consent.db'}",
                          extra=tables)  # fmt: skip
    path = tmp_path / "sendwarden.toml"
    path.write_text(dumps_toml(config))
    return str(path)


@pytest.mark.parametrize(
    ("tables", "named"),
    [
        ({"redis": {"url": "127.0.0.1:6379"}}, "redis.url: '127.0.0.1:6379' is not a Redis URL"),
        ({"redis": {"url": "redis://127.0.0.1:port/0"}}, "redis.url: 'redis://127.0.0.1:port/0'"),
        ({"consent": {"database": "sqlite:///relative.db"}}, "consent.database: "),
        ({"consent": {"database": "sqlite:///.run/consent.db"}}, "is a relative path"),
        ({"alerts": {"smtp_password_file": "secret.txt"}}, "alerts.smtp_password_file"),
    ],
)
def test_what_cannot_run_is_an_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tables: dict[str, dict[str, object]],
    named: str,
) -> None:  # fmt: skip
    assert main(["check-config", "-c", write(tmp_path, **tables)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("tables", "warning"),
    [
        ({"policy": {"trusted_networks": ["10.0.0.0/8", "0.0.0.0/0"]}},
         "policy.trusted_networks[1]: 0.0.0.0/0 trusts every address on the internet"),
        ({"policy": {"trusted_networks": ["::/0"]}},
         "policy.trusted_networks[0]: ::/0 trusts every address"),
        ({"api": {"listen": "0.0.0.0:8025"}}, "api.listen: 0.0.0.0:8025 is reachable from other"),
        ({"api": {"listen": "[2001:db8::1]:8025"}}, "api.listen: [2001:db8::1]:8025 is reachable"),
        ({"alerts": {"mail_to": ["abuse@hosting.example"]}},
         "alerts.smtp_login: alert mail is submitted without logging in"),
    ],
)  # fmt: skip
def test_likely_mistakes_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tables: dict[str, dict[str, object]],
    warning: str,
) -> None:  # fmt: skip
    assert main(["check-config", "-c", write(tmp_path, **tables)]) == 0
    captured = capsys.readouterr()
    assert f"sendwarden: warning: {warning}" in captured.err
    assert "OK" in captured.out


def test_a_sound_config_has_no_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", write(tmp_path, api={"listen": "[::1]:8025"})]) == 0
    assert capsys.readouterr().err == ""


def test_as_user_names_an_unknown_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    assert main(["check-config", "-c", path, "--as-user", "no-such-user-here"]) == 2
    assert "--as-user: no user 'no-such-user-here'" in capsys.readouterr().err
