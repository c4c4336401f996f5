"""Accounts from a [directory] source through a real Postfix: a login in a mapped domain
is limited as its account, a line appended to the map is in force within one refresh
(no SIGHUP), a truncated map leaves the directory as it was, and with system_users the
mail a Unix user submits with sendmail(1) counts for the account of that name."""

from __future__ import annotations

import contextlib
import pwd
import smtplib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_milter_basics import decisions, sendwarden_cli, wait_for_decision
from tests.support.rig import Rig
from tests.support.service import wait_until

MESSAGE = b"From: {sender}\r\nTo: bob@remote.example\r\nSubject: directory\r\n\r\nHello.\r\n"
SASL_USERS = {
    "info@mapped.example": "info-secret",
    "sales@mapped.example": "sales-secret",
    "ceo@newcomer.example": "ceo-secret",
}
REFRESH = "1s"


def message(sender: str) -> bytes:
    return MESSAGE.replace(b"{sender}", sender.encode())


def send(rig: Rig, login: str, recipient: str = "bob@remote.example") -> None:
    with rig.smtp(login) as client:
        client.sendmail(login, [recipient], message(login))


def directory_rig(
    make_rig: Callable[..., Rig], map_path: Path, map_text: str, **directory: object
) -> Rig:
    """sendwarden with no [[accounts]], a limit of 2 recipients an hour, and the domain
    map ``map_path`` re-read every second."""
    map_path.write_text(map_text)
    return make_rig(
        accounts=[],
        sasl_users=SASL_USERS,
        policy={"recipients_per_hour": 2},
        config_extra={"directory": {"domain_map": str(map_path), "refresh": REFRESH, **directory}},
    )


def test_a_login_in_a_mapped_domain_is_limited_as_its_account(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = directory_rig(make_rig, tmp_path / "userdomains", "mapped.example: webcust\n")
    send(rig, "info@mapped.example")
    send(rig, "sales@mapped.example")  # another mailbox: the same account's quota
    rig.sink.wait_for(2)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(rig, "info@mapped.example")
    ((code, text),) = refused.value.recipients.values()
    assert code == 451, text
    assert b"Account webcust has reached its limit of 2 recipients per hour" in text
    record = wait_for_decision(rig, login="sales@mapped.example")
    assert record["account"] == "webcust"


def test_an_appended_line_is_in_force_within_one_refresh(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    map_path = tmp_path / "userdomains"
    rig = directory_rig(make_rig, map_path, "mapped.example: webcust\n")
    milter = rig.milter
    assert milter is not None
    send(rig, "ceo@newcomer.example")
    first = wait_for_decision(rig, login="ceo@newcomer.example")
    assert first["account"] != "newcust"
    loads = milter.log().count("directory loaded")
    with map_path.open("a") as handle:
        handle.write("newcomer.example: newcust\n")
    # Within one refresh (1 s) and the build it starts; no SIGHUP is sent.
    wait_until(
        lambda: milter.log().count("directory loaded") > loads,
        timeout=10,
        what="the appended line was not loaded within the refresh",
    )
    send(rig, "ceo@newcomer.example")
    wait_until(
        lambda: any(
            d.get("account") == "newcust" and d.get("login") == "ceo@newcomer.example"
            for d in decisions(rig)
        ),
        timeout=10,
        what=lambda: f"no decision for newcust: {decisions(rig)}",
    )
    assert "reloaded" not in milter.log()


def test_a_truncated_map_leaves_the_directory_as_it_was(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    map_path = tmp_path / "userdomains"
    lines = "".join(f"filler{i}.example: filler{i}\n" for i in range(10))
    rig = directory_rig(make_rig, map_path, "mapped.example: webcust\n" + lines)
    milter = rig.milter
    assert milter is not None
    full = map_path.read_bytes()
    map_path.write_bytes(full[: len(full) // 3])  # cut mid-line, most lines gone
    milter.wait_for_log("directory not refreshed, keeping the last good one", timeout=15)
    assert "Account directory source cannot be read" in milter.wait_for_log("ALERT new", 5)
    send(rig, "info@mapped.example")
    record = wait_for_decision(rig, login="info@mapped.example")
    assert record["account"] == "webcust"
    rig.sink.wait_for(1)
    which = sendwarden_cli(rig, "account", "which", "info@mapped.example")
    assert which.returncode == 2 and "no newline" in which.stderr  # the CLI reads it now


@contextlib.contextmanager
def unix_user() -> Iterator[pwd.struct_passwd]:
    """A throw-away Unix user (no home, no login), removed afterwards."""
    name = f"swt{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def test_sendmail_from_a_unix_user_counts_for_the_account_of_that_name(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    with unix_user() as user:
        name, uid = user.pw_name, user.pw_uid
        rig = directory_rig(
            make_rig, tmp_path / "userdomains", f"{name}.example: {name}\n", system_users=True
        )
        sender = f"web@{name}.example"
        for _ in range(2):
            result = rig.sendmail(message(sender), sender, ["bob@remote.example"], uid=uid)
            assert result.returncode == 0, result.stderr
        record = wait_for_decision(rig, stage="eom", account=name)
        assert record["account_source"] == "uid"
        rig.sink.wait_for(2)
        # The third recipient in the hour is over the account's limit of 2.
        result = rig.sendmail(message(sender), sender, ["bob@remote.example"], uid=uid)
        assert result.returncode == 0
        refused = wait_for_decision(rig, stage="eom", verdict="tempfail")
        assert refused["account"] == name
        shown = sendwarden_cli(rig, "account", "which", str(uid))
        assert f"account {name}" in shown.stdout, shown.stderr
