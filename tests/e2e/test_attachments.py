"""The 20 MiB per-file cap on real Postfix: decoded size, per file, inbound and outbound."""

from __future__ import annotations

import base64
import os
import signal
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from tests.support.rig import Rig

MIB = 1024 * 1024


def message_with(*files: tuple[str, int], sender: str = "alice@acme.example") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "bob@remote.example"
    message["Subject"] = "files"
    message.set_content("Files attached.\n")
    for name, size in files:
        message.add_attachment(
            bytes(size), maintype="application", subtype="octet-stream", filename=name
        )
    return message.as_bytes(policy=SMTP)


def attached_message(name: str, size: int) -> bytes:
    inner = EmailMessage()
    inner["From"] = "carol@acme.example"
    inner["Subject"] = "the original"
    inner.set_content("See attachment.\n")
    inner.add_attachment(bytes(size), maintype="application", subtype="octet-stream", filename=name)
    outer = EmailMessage()
    outer["From"] = "alice@acme.example"
    outer["To"] = "bob@remote.example"
    outer["Subject"] = "Fwd: the original"
    outer.set_content("Forwarding.\n")
    outer.add_attachment(inner)  # message/rfc822
    return outer.as_bytes(policy=SMTP)


def send(
    rig: Rig,
    data: bytes,
    recipient: str = "bob@remote.example",
    login: str | None = "alice@acme.example",
) -> None:
    with rig.smtp(login) as client:
        client.sendmail(
            "alice@acme.example" if login else "stranger@else.example", [recipient], data
        )


def test_15_mib_file_is_delivered(rig: Rig) -> None:
    send(rig, message_with(("report.pdf", 15 * MIB)))
    (delivered,) = rig.sink.wait_for(1, timeout=60)
    assert len(delivered.data) > 20 * MIB  # base64 made the message bigger than the cap


def test_25_mib_file_is_refused_with_552(rig: Rig) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, message_with(("video.mp4", 25 * MIB)))
    assert refused.value.smtp_code == 552
    text = refused.value.smtp_error
    assert text.startswith(b"5.3.4 Message from account acme refused")
    assert b'"video.mp4" is 25.0 MiB (26214400 bytes)' in text


def test_two_15_mib_files_in_one_message_are_delivered(rig: Rig) -> None:
    send(rig, message_with(("a.bin", 15 * MIB), ("b.bin", 15 * MIB)))
    rig.sink.wait_for(1, timeout=60)


def test_25_mib_file_inside_an_attached_message_is_refused(rig: Rig) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, attached_message("inner.iso", 25 * MIB))
    assert refused.value.smtp_code == 552
    assert b'"inner.iso"' in refused.value.smtp_error


def test_inbound_mail_to_a_local_domain_is_capped_too(rig: Rig) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, message_with(("big.zip", 25 * MIB)), recipient="info@hosting.example", login=None)
    assert refused.value.smtp_code == 552
    assert b"no known account" in refused.value.smtp_error


def two_boundaries(file_size: int) -> bytes:
    """A file over the cap that only some readings see whole: the Content-Type names
    boundary "big" (RFC 2231 form, which the stdlib's default policy reads) and
    boundary "small" (plain, which compat32 reads); "--small" lines cut the base64
    into small parts for the one reading, and are junk inside one file for the other."""
    encoded = base64.encodebytes(bytes(file_size)).replace(b"\n", b"\r\n")
    step = 76 * 20_000  # one "--small" line after every ~1.5 MB of base64
    pieces = [encoded[start : start + step] for start in range(0, len(encoded), step)]
    return (
        b"From: alice@acme.example\r\nTo: bob@remote.example\r\nSubject: one file\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary*=''big; boundary=small\r\n\r\n"
        b"--big\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="whole.iso"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + b"--small\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n".join(pieces)
        + b"--big--\r\n--small--\r\n"
    )


def test_ambiguous_boundary_with_an_over_cap_file_is_refused_with_554(rig: Rig) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, two_boundaries(25 * MIB))
    assert refused.value.smtp_code == 554
    text = " ".join(refused.value.smtp_error.decode().split())
    assert text.startswith("5.6.0 Message from account acme refused: its MIME structure")
    assert "RFC 2231 boundary*" in text
    assert rig.sink.messages == []


def fragment(number: int, total: int, size: int, message_id: str = "iso@acme.example") -> bytes:
    """One message/partial fragment (RFC 2046 5.2.2) of `size` bytes of the whole."""
    head = b"Subject: the file\r\nContent-Type: application/octet-stream\r\n\r\n"
    body = (head if number == 1 else b"") + b"A" * (size - 2) + b"\r\n"
    return (
        b"From: alice@acme.example\r\nTo: bob@remote.example\r\n"
        b"Subject: the file (part %d/%d)\r\nMIME-Version: 1.0\r\n"
        % (number, total)
        + f'Content-Type: message/partial; id="{message_id}"; number={number}; '
        f"total={total}\r\n\r\n".encode()
        + body
    )


def test_message_partial_fragments_are_refused_by_default(rig: Rig) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, fragment(1, 3, 10 * MIB))
    assert refused.value.smtp_code == 554
    text = " ".join(refused.value.smtp_error.decode().split())
    assert text.startswith("5.6.0 Message from account acme refused: it is one fragment")
    assert text.endswith("Send the file whole or share a link.")
    assert rig.sink.messages == []


def test_counted_fragments_are_capped_as_one_file_across_messages(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(policy={"message_partial": "count", "max_attachment_bytes": 3 * MIB})
    send(rig, fragment(1, 3, MIB))
    send(rig, fragment(2, 3, MIB))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, fragment(3, 3, 2 * MIB))
    assert refused.value.smtp_code == 552
    text = " ".join(refused.value.smtp_error.decode().split())
    assert "the fragments of the message sent in parts as id 'iso@acme.example' add up to" in text
    assert len(rig.sink.wait_for(2, timeout=60)) == 2


def test_cap_switched_on_by_a_reload_sees_the_body(make_rig: Callable[..., Rig]) -> None:
    """Started without any body check, the milter negotiates no body step; after a
    SIGHUP that turns the cap on, new connections must negotiate it again (pymilter
    caches the protocol mask on the class, and a subclass would inherit its parent's)."""
    rig = make_rig(policy={"check_attachments": False, "max_attachment_bytes": 1000})
    assert rig.milter is not None and rig.config_path is not None and rig.milter.pid
    send(rig, message_with(("small.bin", 5000)))  # no cap yet: delivered
    rig.sink.wait_for(1)
    config = rig.config_path.read_text()
    assert "check_attachments = false" in config
    on = config.replace("check_attachments = false", "check_attachments = true")
    rig.config_path.write_text(on)
    os.kill(rig.milter.pid, signal.SIGHUP)
    rig.milter.wait_for_log("configuration reloaded")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, message_with(("small.bin", 5000)))
    assert refused.value.smtp_code == 552
    assert len(rig.sink.messages) == 1
