"""The policy scenarios every MTA is proven with (Postfix has its own, older suites):
accounts, messages and the log reader the Sendmail and Exim suites share."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest

from sendwarden.consent.model import ConsentStore, EventKind, NewEvent
from tests.support.rig import Rig, running_rig
from tests.support.sendwarden_config import DEFAULT_ACCOUNT

ALICE = "alice@acme.example"  # account acme: SASL login, and local uid 65534 (nobody)
BOB = "bob@globex.example"  # account globex: 3 recipients per hour
CAROL = "carol@initech.example"  # account initech: the one the suspension test suspends
ACCOUNTS: list[dict[str, Any]] = [
    DEFAULT_ACCOUNT,
    {"id": "globex", "logins": [BOB], "domains": ["globex.example"], "recipients_per_hour": 3},
    {"id": "initech", "logins": [CAROL], "domains": ["initech.example"]},
]
MALLORY = "mallory@freemail.example"  # a real SASL login that no account lists
USERS = {ALICE: "alice-secret", BOB: "bob-secret", CAROL: "carol-secret", MALLORY: "m-secret"}
SIGNED_UP = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def record_consent(
    ledger: ConsentStore, kind: EventKind, recipients: Sequence[str], days: int = 0
) -> None:
    """Acme's readers opted in (double opt-in) or unsubscribed (one click), ``days``
    after the sign-up day, in the ledger the milter reads."""
    ledger.append(
        NewEvent(
            account="acme",
            recipient=recipient,
            kind=kind,
            occurred_at=SIGNED_UP + timedelta(days=days),
            recorded_by="e2e",
            method="double-opt-in" if kind is EventKind.GRANTED else "one-click",
            confirmed_at=SIGNED_UP + timedelta(days=days, minutes=5)
            if kind is EventKind.GRANTED
            else None,
            source="https://acme.example/newsletter",
        )
        for recipient in recipients
    )


def too_deep(levels: int = 25) -> bytes:
    """MIME nested deeper than any mail client makes (the default cap is 20): 554 5.6.0."""
    body = b"Content-Type: text/plain\r\n\r\nhidden\r\n"
    for level in range(levels):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" +
                boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")  # fmt: skip
    return b"From: alice@acme.example\r\nTo: bob@remote.example\r\nSubject: deep\r\n" + (
        b"MIME-Version: 1.0\r\n" + body
    )


MIB = 1024 * 1024


def message(
    sender: str = ALICE, to: str = "bob@remote.example", subject: str = "hello", **headers: str
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello.\n")
    return msg.as_bytes(policy=SMTP)  # CRLF: Sendmail refuses bare LF


def with_file(size: int, sender: str = ALICE) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "bob@remote.example"
    msg["Subject"] = "files"
    msg.set_content("File attached.\n")
    msg.add_attachment(bytes(size), maintype="application", subtype="octet-stream",
                       filename="big.bin")  # fmt: skip
    return msg.as_bytes(policy=SMTP)


def decisions(log: str) -> list[dict[str, Any]]:
    """The JSON decision lines of a sendwarden log."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == "decision"]


def wait_for_decision(read_log: Any, timeout: float = 15.0, **wanted: Any) -> dict[str, Any]:
    """The first decision record with every ``wanted`` key/value, polling ``read_log()``."""
    deadline = time.monotonic() + timeout
    while True:
        for record in decisions(read_log()):
            if all(record.get(key) == value for key, value in wanted.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no decision with {wanted}: {decisions(read_log())}")
        time.sleep(0.05)


def module_rig(**kwargs: Any) -> tuple[Any, Any]:
    """The fixtures ``shared_rig`` (one rig, ``start_rig(**kwargs)``, for the whole
    module: its tests use different accounts and domains) and ``rig`` (that rig with an
    empty sink), to assign at module level: ``shared_rig, rig = module_rig(...)``."""

    @pytest.fixture(scope="module")
    def shared_rig() -> Iterator[Rig]:
        with running_rig(**kwargs) as rig:
            yield rig

    @pytest.fixture
    def rig(shared_rig: Rig) -> Rig:
        shared_rig.sink.clear()
        return shared_rig

    return shared_rig, rig


def sendwarden_log(rig: Rig) -> Callable[[], str]:
    """Reads the log of the rig's sendwarden process (milter or proxy)."""
    assert rig.milter is not None
    return rig.milter.log
