"""A real Debian mail host (issue 14): sendwarden's own alert mail through its own
milter, Debian's chrooted Postfix with the deploy snippet's socket, and `make run`'s
milter used by a local Postfix."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.milter_process import MilterProcess
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix, session_members
from tests.support.redis_server import RedisServer
from tests.support.rig import Rig
from tests.support.sendwarden_config import DEFAULT_ACCOUNT, DEFAULT_SASL_USERS
from tests.support.sink import SmtpSink

REPO = Path(__file__).resolve().parents[2]
MESSAGE = b"From: Alice <alice@acme.example>\r\nSubject: hello\r\n\r\nHello.\r\n"
ALERTS_LOGIN = "alerts@hosting.example"


def _alerts_rig(make_rig: Callable[..., Rig], tmp_path: Path) -> Rig:
    password_file = tmp_path / "alerts.secret"
    password_file.write_text("alerts-secret\n")
    return make_rig(
        accounts=[DEFAULT_ACCOUNT],
        sasl_users={**DEFAULT_SASL_USERS, ALERTS_LOGIN: "alerts-secret"},
        config_extra={
            "alerts": {
                "mail_to": ["abuse@hosting.example"],
                "mail_from": "sendwarden@hosting.example",
                "smtp_login": ALERTS_LOGIN,
                "smtp_password_file": str(password_file),
            }
        },
    )


def test_alert_mail_passes_its_own_milter_by_its_login(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    """Issue 14.1: with alerts.smtp_server pointing at the Postfix in front of the
    milter, every alert was refused as carrying a forged X-Sendwarden-Alert header."""
    rig = _alerts_rig(make_rig, tmp_path)
    config = rig.config_path
    assert config is not None
    # The rig's config says smtp_server 127.0.0.1:25; point it at this Postfix.
    text = config.read_text().replace(
        "[alerts]", f'[alerts]\nsmtp_server = "127.0.0.1:{rig.postfix.smtp_port}"', 1
    )
    config.write_text(text)
    sent = subprocess.run(
        [sys.executable, "-m", "sendwarden", "alerts", "test", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr + rig.report()
    (mail,) = rig.sink.wait_for(1)
    assert mail.rcpt_tos == ("abuse@hosting.example",)
    assert mail.message["X-Sendwarden-Alert"] is not None


def test_a_customer_cannot_send_the_alert_header(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = _alerts_rig(make_rig, tmp_path)
    forged = b"X-Sendwarden-Alert: new; dnsbl:192.0.2.1:zen.example\r\n" + MESSAGE
    with rig.smtp("alice@acme.example") as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("alice@acme.example", ["bob@remote.example"], forged)
    assert refused.value.smtp_code == 550
    assert b"X-Sendwarden-Alert" in refused.value.smtp_error
    # The alert service's password is not the customer's: a wrong one gets no login.
    with pytest.raises(smtplib.SMTPAuthenticationError):
        rig.smtp(ALERTS_LOGIN, "alice-secret")


def _chrooted_pids(postfix: PrivatePostfix, command: str) -> list[int]:
    """Processes of this instance running ``command`` with the queue directory as root."""
    master = postfix._read_master_pid()
    assert master is not None
    found = []
    for pid in session_members(master):
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if exe == command and Path(root) == postfix.queue_dir:
            found.append(pid)
    return found


@pytest.mark.parametrize("chroot", [True, False], ids=["debian-chroot", "no-chroot"])
def test_deploy_snippet_works_chrooted_or_not(make_rig: Callable[..., Rig], chroot: bool) -> None:
    """Issue 14.2: Debian chroots smtpd and cleanup; a socket under /run is out of their
    reach. The deploy snippet's socket (inside the queue directory, named
    unix:sendwarden/milter.sock) serves SMTP and sendmail(1) mail either way."""
    rig = make_rig(accounts=[DEFAULT_ACCOUNT], chroot=chroot, socket_in_queue=True)
    main_cf = (rig.postfix.config_dir / "main.cf").read_text()
    assert "smtpd_milters = unix:sendwarden/milter.sock" in main_cf
    assert "non_smtpd_milters = unix:sendwarden/milter.sock" in main_cf
    # sendmail(1): pickup and cleanup (chrooted on Debian) hand it to the milter.
    result = rig.sendmail(MESSAGE, "web@acme.example", ["bob@remote.example"])
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == ("bob@remote.example",)
    # SMTP: the (chrooted) smtpd asks the milter, which refuses the open relay.
    with rig.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("someone@elsewhere.example", ["bob@remote.example"], MESSAGE)
    assert refused.value.recipients["bob@remote.example"][0] == 554
    assert rig.milter is not None
    log = rig.milter.log()
    assert '"account_source": "uid"' in log and '"rule": "relay"' in log
    with rig.smtp() as client:  # a session keeps smtpd alive while we look at it
        client.noop()
        smtpd = _chrooted_pids(rig.postfix, "smtpd")
    cleanup = _chrooted_pids(rig.postfix, "cleanup")
    if chroot:
        assert smtpd and cleanup, "smtpd and cleanup should run chrooted in the queue directory"
    else:
        assert not smtpd and not cleanup


def test_make_run_milter_is_usable_by_a_local_postfix(
    tmp_path: Path, redis_server: RedisServer, smtp_sink: SmtpSink
) -> None:
    """Issue 14.3: `make run`'s socket was root-only. It listens on loopback TCP now,
    which Postfix's own user reaches (chrooted or not); the milter runs as root, as
    `make run` does."""
    run_dir = tmp_path / "run"
    port = free_port()
    subprocess.run(
        ["make", "-s", "run-config", f"RUN_DIR={run_dir}", f"REDIS_PORT={redis_server.port}",
         f"MILTER_PORT={port}"],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    config = run_dir / "sendwarden.toml"
    checked = subprocess.run(
        [sys.executable, "-m", "sendwarden", "check-config", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    milter = MilterProcess(config, socket_mode=None)
    postfix = PrivatePostfix(sink_port=smtp_sink.port, milter=f"inet:{port}@127.0.0.1")
    try:
        milter.start()
        postfix.start()
        # From a trusted host no account lists (the dev config trusts 127.0.0.0/8), in
        # no customer's domain: accepted, and decided by the milter.
        shop = b"From: news@shop.example\r\nSubject: hello\r\n\r\nHello.\r\n"
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
            client.sendmail("news@shop.example", ["info@hosting.example"], shop)
        smtp_sink.wait_for(1)
        milter.wait_for_log('"event": "decision"')
    finally:
        postfix.close()
        milter.stop()
    assert f'"sqlite:///{run_dir}/consent.db"' in config.read_text()  # absolute: no cwd
