"""``sendwarden api token create`` and ``sendwarden api -c FILE`` as an operator runs them:
mint a token, paste the printed lines into the config, serve, call it over HTTP."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sendwarden.cli import main
from sendwarden.config import is_loopback, settings_from_mapping, split_listen
from sendwarden.consent.api import MAX_BODY_BYTES
from tests.support.ports import free_port, wait_for_tcp
from tests.support.sendwarden_config import build_config, dumps_toml


def base_config(tmp_path: Path, **extra: object) -> Path:
    """A config with account acme (the API never touches Redis or the milter socket)."""
    path = tmp_path / "sendwarden.toml"
    config = build_config(
        socket="inet:8890@127.0.0.1",
        redis_url="redis://127.0.0.1:1/0",
        consent_database=f"sqlite:///{tmp_path / 'consent.db'}",
    )
    path.write_text(dumps_toml(config) + "".join(str(text) for text in extra.values()))
    return path


def mint(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[str, str]:
    """The token and the config lines ``api token create`` prints."""
    assert main(["api", "token", "create", "-c", str(config), *args]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^\s+(swt_\S+)$", out, re.M)
    assert token is not None, out
    return token.group(1), out[out.index("[[api.tokens]]") :]


def test_printed_lines_are_valid_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    token, lines = mint(
        capsys, base_config(tmp_path), "--account", "acme", "--name", 'acme "signup"'
    )
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


@dataclass
class ServedApi:
    base: str
    acme: str
    staff: str
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    def __iter__(self) -> Iterator[str]:  # base, acme, staff = served_api
        return iter((self.base, self.acme, self.staff))


@pytest.fixture
def served_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[ServedApi]:
    """A running ``sendwarden api`` on a loopback port: (base URL, acme token, staff token)."""
    config_path = base_config(tmp_path)
    acme, acme_lines = mint(capsys, config_path, "--account", "acme")
    staff, staff_lines = mint(capsys, config_path, "--staff")
    port = free_port()
    config_path = base_config(
        tmp_path, listen=f'\n[api]\nlisten = "127.0.0.1:{port}"\n\n', lines=acme_lines + staff_lines
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
        yield ServedApi(f"http://127.0.0.1:{port}", acme, staff, process, config_path, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0, log_path.read_text()
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def test_served_api_records_and_shows_consent(served_api: ServedApi) -> None:
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


def test_token_create_reads_the_config_given_and_refuses_unknown_accounts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(base_config(tmp_path))
    # -c after `token create`, or after `api`: both are the config read.
    assert main(["api", "-c", config, "token", "create", "--account", "acme"]) == 0
    assert "swt_" in capsys.readouterr().out
    assert main(["api", "token", "create", "-c", config, "--account", "nobody"]) == 2
    captured = capsys.readouterr()
    assert "swt_" not in captured.out and "no account with id 'nobody'" in captured.err
    assert main(["api", "-c", config, "token", "create", "--account", "nobody"]) == 2
    assert "no account with id 'nobody'" in capsys.readouterr().err
    missing = str(tmp_path / "absent.toml")
    assert main(["api", "token", "create", "-c", missing, "--account", "acme"]) == 2
    assert f"cannot read {missing}" in capsys.readouterr().err


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw_post(base: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """Send the headers and ``body`` (maybe only a start of what Content-Length
    announces) and return the status line the server answers with."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(head.encode() + b"\r\n")
        with contextlib.suppress(OSError):  # the server may answer before taking it all
            sock.sendall(body)
        answer = sock.makefile("rb").readline()
    return answer


def test_a_huge_body_without_a_token_is_refused_before_it_is_read(served_api: ServedApi) -> None:
    """Issue 14.4: 50 MB without a token grew the server by 100 MB. Now 401 from the
    headers alone: the server reads none of it."""
    before = _rss_kib(served_api.process.pid)
    headers = {"Content-Type": "application/json", "Content-Length": str(50 * 1024 * 1024)}
    answer = _raw_post(served_api.base, "/v1/consent", headers, b"x" * (1024 * 1024))
    assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 413")), answer
    assert _rss_kib(served_api.process.pid) - before < 8 * 1024  # KiB
    # Within the size limit, but no body sent at all: the answer comes from the headers
    # alone (a server that read the body first would wait for it, and time out here).
    small = {"Content-Type": "application/json", "Content-Length": str(MAX_BODY_BYTES - 1)}
    assert _raw_post(served_api.base, "/v1/consent", small, b"").startswith(b"HTTP/1.1 401")
    wrong = {**small, "Authorization": "Bearer swt_not-a-configured-token"}
    assert _raw_post(served_api.base, "/v1/consent", wrong, b"").startswith(b"HTTP/1.1 401")


def test_bodies_over_the_limit_get_413_even_with_a_token(served_api: ServedApi) -> None:
    token = {"Authorization": f"Bearer {served_api.acme}", "Content-Type": "application/json"}
    too_long = {**token, "Content-Length": str(MAX_BODY_BYTES + 1)}
    answer = _raw_post(served_api.base, "/v1/consent", too_long, b"x" * 4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    with httpx.Client(base_url=served_api.base, timeout=10) as client:
        chunks = iter([b'{"recipient": "', b"a" * MAX_BODY_BYTES, b'@example.org"}'])
        chunked = client.post("/v1/consent", content=chunks, headers=token)  # no length
        assert chunked.status_code == 413
        fine = client.post("/v1/consent", json={"recipient": "dave@example.org"}, headers=token)
        assert fine.status_code == 201, fine.text


def test_sighup_reloads_the_tokens(
    served_api: ServedApi, capsys: pytest.CaptureFixture[str]
) -> None:
    config = served_api.config_path
    new, new_lines = mint(capsys, config, "--account", "acme", "--name", "second")
    staff, staff_lines = mint(capsys, config, "--staff", "--name", "sam")
    config.write_text(config.read_text() + "\n" + new_lines + "\n" + staff_lines)
    served_api.process.send_signal(signal.SIGHUP)
    record = {"recipient": "erin@example.org"}
    with httpx.Client(base_url=served_api.base, timeout=10) as client:
        for _ in range(100):
            answer = client.post(
                "/v1/consent", json=record, headers={"Authorization": f"Bearer {new}"}
            )
            if answer.status_code != 401:
                break
            time.sleep(0.1)
        assert answer.status_code == 201, answer.text
        # The support page signs staff in with the reloaded tokens too.
        login = client.post("/ui/login", data={"token": staff}, follow_redirects=False)
        assert login.status_code == 303, login.text
        # A broken file on the next SIGHUP: refused, logged, the running tokens stay.
        config.write_text("[api\n")
        served_api.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert served_api.process.poll() is None
        again = client.post("/v1/consent", json=record, headers={"Authorization": f"Bearer {new}"})
        assert again.status_code == 201
    assert "reload refused, keeping the running tokens" in served_api.log_path.read_text()
