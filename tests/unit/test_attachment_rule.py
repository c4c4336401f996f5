"""The per-file cap as the policy core applies it, and the check fed like the milter feeds it."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from sendwarden.attachments.report import PartSize, ScanReport
from sendwarden.checks.attachments import AttachmentCheck
from sendwarden.policy.attachments import attachment_verdict
from sendwarden.policy.facts import Client, Transaction

MIB = 1024 * 1024
CAP = 20 * MIB


def report(size: int | None, *, filename: str | None = "big.zip", deep: bool = False) -> ScanReport:
    largest = (
        None
        if size is None
        else PartSize(filename, "application/zip", size, size * 4 // 3, "base64", 1)
    )
    return ScanReport(largest, 2, deep, (), size or 0)


@pytest.mark.parametrize(
    ("size", "refused"),
    [(None, False), (1, False), (CAP - 1, False), (CAP, False), (CAP + 1, True), (25 * MIB, True)],
)
def test_cap_is_per_file_and_inclusive(size: int | None, refused: bool) -> None:
    verdict = attachment_verdict(report(size), CAP, 20, "acme")
    assert (verdict is not None) == refused
    if verdict is not None:
        assert verdict.reply().startswith("552 5.3.4 Message from account acme refused")
        assert (
            '"big.zip"' in verdict.text and str(size) in verdict.text and str(CAP) in verdict.text
        )


def test_unnamed_part_is_named_by_type() -> None:
    verdict = attachment_verdict(report(CAP + 1, filename=None), CAP, 20, None)
    assert verdict is not None
    assert "an unnamed application/zip part" in verdict.text
    assert "no known account" in verdict.text


def test_too_deep_nesting_has_its_own_reply() -> None:
    verdict = attachment_verdict(report(10, deep=True), CAP, 20, "acme")
    assert verdict is not None
    assert verdict.reply().startswith("554 5.6.0")
    assert "20 levels" in verdict.text


def test_check_streams_headers_and_body_chunks() -> None:
    payload = base64.encodebytes(b"x" * 3000)
    body = (
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="f.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + payload.replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )
    check = AttachmentCheck(max_bytes=2999, max_depth=20)
    txn = Transaction(client=Client(address=ipaddress.ip_address("192.0.2.1")))
    check.at_header(txn, "MIME-Version", "1.0")
    check.at_header(txn, "Content-Type", 'multipart/mixed; boundary="b"')
    for start in range(0, len(body), 100):
        check.at_body(txn, body[start : start + 100])
    verdict = check.at_eom(txn)
    assert verdict is not None and "f.bin" in verdict.text and "3000 bytes" in verdict.text
