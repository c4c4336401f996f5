"""``sendwarden api token create`` and ``sendwarden api -c FILE`` as an operator runs them:
mint a token, paste the printed lines into the config, serve, call it over HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sendwarden.cli import main
from sendwarden.config import is_loopback, settings_from_mapping, split_listen
from tests.support.ports import free_port, wait_for_tcp
from tests.support.sendwarden_config import build_config, dumps_toml


def mint(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """The token and the config lines ``api token create`` prints."""
    assert main(["api", "token", "create", *args]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^\s+(swt_\S+)$", out, re.M)
    assert token is not None, out
    return token.group(1), out[out.index("[[api.tokens]]") :]


def test_printed_lines_are_valid_config(capsys: pytest.CaptureFixture[str]) -> None:
    token, lines = mint(capsys, "--account", "acme", "--name", 'acme "signup"')
    document = tomllib.loads(lines)
    (entry,) = document["api"]["tokens"]
    assert entry["name"] == 'acme "signup"' and entry["account"] == "acme"
    assert token not in lines  # only the hash goes into the config
    settings = settings_from_mapping({**document, "accounts": [{"id": "acme"}]})
    assert settings.api.tokens[0].sha256 == entry["sha256"]


def test_default_listen_is_loopback_only() -> None:
    listen = settings_from_mapping({}).api.listen
    assert listen == "127.0.0.1:8025"
    assert is_loopback(split_listen(listen)[0])
    assert split_listen("[::1]:9000") == ("::1", 9000)
    assert not is_loopback("0.0.0.0")


@pytest.fixture
def served_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[str, str, str]]:
    """A running ``sendwarden api`` on a loopback port: (base URL, acme token, staff token)."""
    acme, acme_lines = mint(capsys, "--account", "acme")
    staff, staff_lines = mint(capsys, "--staff")
    port = free_port()
    config = build_config(
        socket="inet:8890@127.0.0.1",
        redis_url="redis://127.0.0.1:1/0",  # the API never touches Redis
        consent_database=f"sqlite:///{tmp_path / 'consent.db'}",
    )
    config_path = tmp_path / "sendwarden.toml"
    config_path.write_text(
        dumps_toml(config) + f'\n[api]\nlisten = "127.0.0.1:{port}"\n\n' + acme_lines + staff_lines
    )
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sendwarden", "api", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_for_tcp("127.0.0.1", port, timeout=30):
            pytest.fail(f"sendwarden api did not listen:\n{log_path.read_text()}")
        yield f"http://127.0.0.1:{port}", acme, staff
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0, log_path.read_text()
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def test_served_api_records_and_shows_consent(served_api: tuple[str, str, str]) -> None:
    base, acme, staff = served_api
    with httpx.Client(base_url=base, timeout=10) as client:
        assert "/v1/consent" in client.get("/openapi.json").json()["paths"]
        created = client.post(
            "/v1/consent",
            json={"recipient": "carol@example.org", "source": "https://acme.example/join"},
            headers={"Authorization": f"Bearer {acme}"},
        )
        assert created.status_code == 201, created.text
        refused = client.post(
            "/v1/consent",
            json={"recipient": "carol@example.org"},
            headers={"Authorization": f"Bearer {staff}"},
        )
        assert refused.status_code == 403
        shown = client.get(
            "/v1/consent/carol@example.org", headers={"Authorization": f"Bearer {staff}"}
        )
        assert shown.status_code == 200
        assert shown.json()["accounts"][0]["status"][0]["consent"] is True


def test_api_refuses_to_start_without_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sendwarden.toml"
    config.write_text(
        dumps_toml(build_config(socket="inet:8890@127.0.0.1", redis_url="redis://127.0.0.1:1/0"))
    )
    assert main(["api", "-c", str(config)]) == 2
    assert "api.tokens: no tokens configured" in capsys.readouterr().err
