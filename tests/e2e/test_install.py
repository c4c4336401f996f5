"""`make install` (issue 14.7) into a temporary prefix, from a copy of the source tree
that never ran `make venv` or `make test`; then the installed milter runs as an
unprivileged user in front of a real Postfix."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.milter_process import MilterSocket
from tests.support.postfix import PrivatePostfix
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import dumps_toml
from tests.support.service import wait_until
from tests.support.sink import SmtpSink

REPO = Path(__file__).resolve().parents[2]
UNITS = ("sendwarden.service", "sendwarden-alerts.service", "sendwarden-api.service")
MAX_EXPOSURE = 3.0
USER = "nobody"


@dataclass
class Installation:
    root: Path
    source: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def sysconfdir(self) -> Path:
        return self.root / "etc"

    @property
    def unitdir(self) -> Path:
        return self.root / "units"

    @property
    def sendwarden(self) -> str:
        return str(self.prefix / "venv" / "bin" / "sendwarden")

    def make_install(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "install", f"PREFIX={self.prefix}", f"SYSCONFDIR={self.sysconfdir}",
             f"UNITDIR={self.unitdir}", "SERVICE_GROUP=nogroup"],
            cwd=self.source, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip


def _copy_tracked_tree(destination: Path) -> None:
    """The files git knows (committed or not, never .venv, build or dist)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installation]:
    root = Path(tempfile.mkdtemp(prefix="sw-install-"))
    root.chmod(0o755)  # the unprivileged user runs the installed virtualenv from here
    try:
        source = root / "src"
        _copy_tracked_tree(source)
        installation = Installation(root, source)
        result = installation.make_install()
        assert result.returncode == 0, result.stdout + result.stderr
        yield installation
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_puts_everything_in_place_and_is_idempotent(installed: Installation) -> None:
    config = installed.sysconfdir / "sendwarden.toml"
    assert (config.stat().st_mode & 0o777) == 0o640
    version = subprocess.run([installed.sendwarden, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("sendwarden ")
    # Runtime dependencies only: no test tools in the production virtualenv.
    site = next((installed.prefix / "venv" / "lib").glob("python3*/site-packages"))
    assert (site / "Milter").is_dir() or list(site.glob("pymilter*"))
    # (aiosmtpd is a runtime dependency: the Exim proxy.)
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "playwright", "fast_mail_parser"):
        assert not list(site.glob(f"{tool}*")), tool
    units = {name: (installed.unitdir / name).read_text() for name in UNITS}
    config.write_text(config.read_text() + "# the operator's edit\n")
    again = installed.make_install()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept" in again.stdout
    assert config.read_text().endswith("# the operator's edit\n")  # never overwritten
    assert {name: (installed.unitdir / name).read_text() for name in UNITS} == units


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_sandboxed_and_point_at_installed_documentation(
    installed: Installation, unit: str
) -> None:
    text = (installed.unitdir / unit).read_text()
    documentation = re.search(r"^Documentation=file://(\S+)$", text, re.M)
    assert documentation is not None and Path(documentation.group(1)).is_file()
    assert f"ExecStart={installed.sendwarden} " in text
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    analysed = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(installed.unitdir / unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", analysed.stdout)
    assert score is not None, analysed.stdout + analysed.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, analysed.stdout


def test_the_installed_milter_runs_as_an_unprivileged_user(
    installed: Installation, redis_server: RedisServer, smtp_sink: SmtpSink
) -> None:
    user = pwd.getpwnam(USER)
    work = installed.root / "service"
    work.mkdir()
    os.chown(work, user.pw_uid, user.pw_gid)
    key = work / "acme.key"
    keygen = subprocess.run(
        [installed.sendwarden, "dkim", "keygen", "acme.example", "--selector", "s1",
         "--key-file", str(key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    config = work / "unprivileged.toml"
    socket_path = work / "milter.sock"
    config.write_text(
        dumps_toml(
            {
                "milter": {"socket": f"unix:{socket_path}", "socket_mode": "0666"},
                "redis": {"url": redis_server.url},
                "policy": {"local_domains": ["hosting.example"], "trusted_networks": []},
                "consent": {"database": f"sqlite:///{work / 'consent.db'}"},
                "dkim": {"domain": "acme.example", "selector": "s1", "key_file": str(key)},
                "accounts": [{"id": "acme", "domains": ["acme.example"]}],
            }
        )
    )
    config.chmod(0o644)

    def check_as_user() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [installed.sendwarden, "check-config", "-c", str(config), "--as-user", USER],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    # Issue 14.5: root reads the 0600 root-owned key; the service user cannot.
    as_root = subprocess.run([installed.sendwarden, "check-config", "-c", str(config)],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert as_root.returncode == 0, as_root.stderr
    refused = check_as_user()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"config error (as {USER}): dkim[acme.example].key_file" in refused.stderr
    os.chown(key, user.pw_uid, user.pw_gid)
    accepted = check_as_user()
    assert accepted.returncode == 0, accepted.stderr
    assert f"OK as user {USER}" in accepted.stdout
    # The units run as User=postfix, Group=sendwarden: USER:GROUP checks with that group.
    config.chmod(0o640)
    os.chown(config, 0, grp.getgrnam("mail").gr_gid)
    no_group = check_as_user()
    assert no_group.returncode == 2 and "cannot read" in no_group.stderr, no_group.stderr
    with_group = subprocess.run(
        [installed.sendwarden, "check-config", "-c", str(config), "--as-user", f"{USER}:mail"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert with_group.returncode == 0, with_group.stderr
    config.chmod(0o644)

    log_path = work / "milter.log"
    with log_path.open("wb") as log:
        milter = subprocess.Popen(
            [installed.sendwarden, "milter", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, user=user.pw_uid, group=user.pw_gid,
            extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    postfix = PrivatePostfix(sink_port=smtp_sink.port, milter=f"unix:{socket_path}")
    try:
        wait_until(MilterSocket("unix", path=str(socket_path)).accepts, 30,
                   lambda: f"milter not listening:\n{log_path.read_text()}",
                   abort=lambda: milter.poll() is not None)  # fmt: skip
        status = Path(f"/proc/{milter.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{user.pw_uid}\s", status, re.M), status
        postfix.start()
        message = b"From: news@acme.example\r\nSubject: hi\r\n\r\nHello.\r\n"
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
            client.sendmail("news@acme.example", ["info@hosting.example"], message)
        smtp_sink.wait_for(1)
        assert '"event": "decision"' in log_path.read_text()
    finally:
        postfix.close()
        milter.terminate()
        milter.wait(timeout=30)
    assert milter.returncode == 0, log_path.read_text()
