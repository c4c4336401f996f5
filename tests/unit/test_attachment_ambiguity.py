"""One reading or a refusal: each way a message can be read twice, message/partial,
and files carried inside text bodies (uuencode, yEnc, BinHex)."""

from __future__ import annotations

import base64
import binascii

import pytest

from sendwarden.attachments import AttachmentScanner, ScanReport, scan_message
from sendwarden.attachments.embedded import EmbeddedFileFinder
from sendwarden.attachments.report import Fragment
from sendwarden.policy.attachments import attachment_verdict
from sendwarden.policy.verdict import Action

FILE = b"x" * 3000
B64_FILE = base64.encodebytes(FILE)


def multipart(content_type: bytes, body: bytes | None = None, extra: bytes = b"") -> bytes:
    """A message whose top-level Content-Type is `content_type`; its body has parts
    delimited by "--A" holding a small file, and "--B" lines inside that part."""
    if body is None:
        body = (
            b"--A\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + B64_FILE[:2000]
            + b"\r\n--B\r\n\r\n"
            + B64_FILE[2000:]
            + b"\r\n--A--\r\n"
        )
    return (
        b"From: a@acme.example\r\nContent-Type: " + content_type + b"\r\n" + extra + b"\r\n" + body
    )


def ambiguities(raw: bytes) -> tuple[str, ...]:
    return scan_message(raw).ambiguities


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        # Two boundaries: the stdlib alone reads the first (compat32) or boundary*
        # (default policy); other parsers take the last one.
        (b"multipart/mixed; boundary=A; boundary*=B", "RFC 2231 boundary*"),
        (b"multipart/mixed; boundary*=''B; boundary=A", "RFC 2231 boundary*"),
        (b"multipart/mixed; boundary=A; boundary*0=B", "RFC 2231 boundary*"),
        (b"multipart/mixed; boundary*0=A; boundary*1=B", "RFC 2231 boundary*"),
        (b"multipart/mixed; boundary*=utf-8''A", "RFC 2231 boundary*"),
        (b"multipart/mixed; boundary=A; boundary=B", "two different boundary parameters"),
        (b'multipart/mixed; boundary="A"; BOUNDARY=B', "two different boundary parameters"),
        # Quoting and comment oddities.
        (b'multipart/mixed; boundary="A\\"B"', "unquote differently"),
        (b'multipart/mixed; boundary="A\\B"', "unquote differently"),
        (b'multipart/mixed; boundary="A "', "unquote differently"),
        (b'multipart/mixed; boundary=""', "unquote differently"),
        (b'multipart/mixed; boundary="\x00A"', "RFC 2046 does not allow"),
        (b'multipart/mixed; boundary="A\xe9"', "RFC 2046 does not allow"),
        (b'multipart/mixed; boundary="A', "read differently"),
        (b"multipart/mixed; boundary=A(B)", "read differently"),
        (b'multipart/mixed; boundary="A" (B)', "read differently"),
        (b"multipart/mixed; boundary=A B", "read differently"),
        (b"multipart/mixed; boundary=A=B", "read differently"),
        (b"multipart/mixed boundary=A", "read differently"),
        (b"multipart/(x)mixed; boundary=A", "read differently"),
        (b"multipart(x)/mixed; boundary=A", "read differently"),
        (b'"multipart/mixed"; boundary=A', "read differently"),
        (b"multipart / mixed; boundary=A", "read differently"),
        (b"multipart/mixed;; boundary=A", "read differently"),
        (b"text/plain (multipart/mixed); boundary=A", "read differently"),
        (b"message/rfc822 (x)", "read differently"),
    ],
)
def test_a_content_type_read_two_ways_is_ambiguous(content_type: bytes, reason: str) -> None:
    found = ambiguities(multipart(content_type))
    assert found, content_type
    assert any(reason in text for text in found), found


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/mixed; boundary=A",
        b'multipart/mixed; boundary="A"',
        b'Multipart/Mixed; Boundary="A";',
        b'multipart/mixed;\r\n\tboundary="A"',
        b'multipart/mixed; boundary = "A" ; charset="x"',
        b"multipart/mixed; boundary=A; boundary=A",  # the same value twice: one reading
        b'multipart/related; type="text/html"; boundary="----=_Part_1.2"',
        b'multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256; boundary="A"',
        # Oddities on a type that is no container change nothing about sizes.
        b'text/plain; name="a \\"b\\".txt" (comment)',
        b"application/octet-stream; name=x y.bin",
    ],
)
def test_content_types_every_parser_reads_alike_are_not_ambiguous(content_type: bytes) -> None:
    assert ambiguities(multipart(content_type)) == ()


def test_two_different_content_type_headers_are_ambiguous() -> None:
    raw = multipart(b"multipart/mixed; boundary=A", extra=b"Content-Type: text/plain\r\n")
    assert ambiguities(raw) == ("two different Content-Type headers",)
    raw = multipart(
        b"multipart/mixed; boundary=A", extra=b"Content-type:  multipart/mixed;  boundary=A\r\n"
    )
    assert ambiguities(raw) == ()  # the same header twice: one reading


def test_conflicting_content_types_inside_a_part_are_ambiguous() -> None:
    body = (
        b"--A\r\nContent-Type: application/octet-stream\r\nContent-Type: multipart/mixed;"
        b" boundary=B\r\n\r\n" + FILE + b"\r\n--A--\r\n"
    )
    assert "two different Content-Type headers" in ambiguities(
        multipart(b"multipart/mixed; boundary=A", body)
    )


@pytest.mark.parametrize(
    "encodings",
    [
        [b"base64", b"7bit"],
        [b"base64 (comment)"],
        [b"base64 x"],
        [b"quoted-printable", b"base64"],
    ],
)
def test_leaf_transfer_encodings_read_two_ways_count_the_largest_reading(
    encodings: list[bytes],
) -> None:
    headers = b"".join(b"Content-Transfer-Encoding: " + value + b"\r\n" for value in encodings)
    raw = b"From: a@acme.example\r\nContent-Type: application/zip\r\n" + headers + b"\r\n"
    report = scan_message(raw + B64_FILE, keep_parts=5)
    assert report.ambiguities == ()
    assert report.largest is not None
    assert report.largest.decoded_bytes == len(B64_FILE)  # raw: more than any decoding


def test_identical_transfer_encodings_are_one_reading() -> None:
    raw = (
        b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Transfer-Encoding: BASE64 \r\n\r\n" + B64_FILE
    )
    report = scan_message(raw)
    assert report.largest is not None
    assert report.largest.decoded_bytes == len(FILE)


@pytest.mark.parametrize(
    ("content_type", "encodings"),
    [
        (b"multipart/mixed; boundary=A", [b"base64"]),
        (b"multipart/mixed; boundary=A", [b"quoted-printable"]),
        (b"multipart/mixed; boundary=A", [b"x-unknown"]),
        (b"multipart/mixed; boundary=A", [b"7bit", b"base64"]),
        (b"message/rfc822", [b"base64"]),
    ],
)
def test_a_transfer_encoding_on_a_container_is_ambiguous(
    content_type: bytes, encodings: list[bytes]
) -> None:
    headers = b"".join(b"Content-Transfer-Encoding: " + value + b"\r\n" for value in encodings)
    found = ambiguities(multipart(content_type, extra=headers))
    assert any("Content-Transfer-Encoding" in text for text in found), found


@pytest.mark.parametrize("encoding", [b"7bit", b"8bit", b"binary", b"7BIT"])
def test_identity_encodings_on_a_container_are_fine(encoding: bytes) -> None:
    raw = multipart(
        b"multipart/mixed; boundary=A", extra=b"Content-Transfer-Encoding: %s\r\n" % encoding
    )
    assert ambiguities(raw) == ()


def test_header_name_case_is_one_reading() -> None:
    raw = b"From: a@acme.example\r\nCONTENT-TYPE: multipart/mixed; boundary=A\r\n\r\n--A\r\n"
    raw += b"content-transfer-ENCODING: base64\r\ncOnTeNt-TyPe: application/zip\r\n\r\n"
    raw += B64_FILE + b"\r\n--A--\r\n"
    report = scan_message(raw)
    assert report.ambiguities == ()
    assert report.largest is not None
    assert report.largest.decoded_bytes == len(FILE)


@pytest.mark.parametrize(
    "spaced", [b"Content-Type :", b"Content-Type\t:", b"content-transfer-encoding  :"]
)
def test_blanks_before_the_colon_of_a_content_header_are_ambiguous(spaced: bytes) -> None:
    body = b"--A\r\n" + spaced + b" multipart/mixed; boundary=B\r\n\r\n" + FILE + b"\r\n--A--\r\n"
    found = ambiguities(multipart(b"multipart/mixed; boundary=A", body))
    assert any("blanks around its name" in text for text in found), found
    # At the top level the MTA hands over fields: a name with blanks is the same case.
    scanner = AttachmentScanner()
    scanner.add_header("Content-Type ", "multipart/mixed; boundary=A")
    scanner.feed(b"--A\r\n\r\nx\r\n--A--\r\n")
    assert scanner.finish().ambiguities


def test_other_headers_with_blanks_before_the_colon_do_not_matter() -> None:
    body = b"--A\r\nX-Note : hi\r\n\r\n" + FILE + b"\r\n--A--\r\n"
    assert ambiguities(multipart(b"multipart/mixed; boundary=A", body)) == ()


def _refusal(report: ScanReport) -> str:
    verdict = attachment_verdict(report, 20 * 1024 * 1024, 20, "acme")
    assert verdict is not None
    assert verdict.action is Action.REJECT
    return verdict.reply()


def test_an_ambiguous_message_is_refused_with_554_and_the_reason() -> None:
    reply = _refusal(scan_message(multipart(b"multipart/mixed; boundary=A; boundary*=B")))
    assert reply.startswith("554 5.6.0 Message from account acme refused: its MIME structure")
    assert "RFC 2231 boundary*" in reply


# -- message/partial -------------------------------------------------------------


def partial(number: int, total: int | None, body: bytes, message_id: str = "abc@acme") -> bytes:
    params = f'id="{message_id}"; number={number}' + (f"; total={total}" if total else "")
    return (
        b"From: a@acme.example\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: message/partial; " + params.encode() + b"\r\n\r\n" + body
    )


def test_message_partial_is_a_fragment_counted_raw_and_refused_by_default() -> None:
    report = scan_message(partial(2, 3, b"A" * 5000 + b"\r\n"), keep_parts=5)
    assert report.fragments == (Fragment("abc@acme", 2, 3, 5002),)
    assert report.largest is not None
    assert report.largest.decoded_bytes == 5002
    reply = _refusal(report)
    assert reply.startswith("554 5.6.0 Message from account acme refused: it is one fragment")
    assert "Send the file whole or share a link." in reply
    counted = attachment_verdict(report, 20 * 1024 * 1024, 20, "acme", message_partial="count")
    assert counted is None  # the check sums the fragments across messages


def test_message_partial_inside_a_multipart_is_found_too() -> None:
    body = (
        b"--A\r\nContent-Type: message/partial; id=x; number=1\r\n\r\n"
        + b"Subject: inner\r\n\r\n"
        + FILE
        + b"\r\n--A--\r\n"
    )
    report = scan_message(multipart(b"multipart/mixed; boundary=A", body))
    assert [fragment.message_id for fragment in report.fragments] == ["x"]
    assert report.fragments[0].number == 1 and report.fragments[0].total == 0


# -- files inside text bodies ------------------------------------------------------


def uuencoded(data: bytes, name: str) -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    return b"begin 644 " + name.encode() + b"\n" + lines + b"`\nend\n"


def text_message(body: bytes, encoding: str = "7bit") -> bytes:
    return (
        b"From: a@acme.example\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body
    )


def embedded(report: ScanReport) -> list[tuple[str | None, str, int]]:
    return [
        (part.filename, part.transfer_encoding, part.decoded_bytes)
        for part in report.parts
        if part.role == "embedded"
    ]


@pytest.mark.parametrize("chunk", [1, 7, 100, 65536])
def test_uuencoded_file_in_a_text_body_counts_as_a_file(chunk: int) -> None:
    payload = bytes(range(256)) * 20
    raw = text_message(b"Here it is:\n" + uuencoded(payload, "report.pdf") + b"bye\n")
    report = scan_message(raw, chunk_size=chunk, keep_parts=5)
    assert embedded(report) == [("report.pdf", "uuencode", len(payload))]


def test_uuencode_inside_base64_and_quoted_printable_text_is_found() -> None:
    payload = b"\x00\xff" * 2000
    uu = uuencoded(payload, "x.bin")
    for encoding, encoded in (
        ("base64", base64.encodebytes(b"hi\n" + uu)),
        ("quoted-printable", binascii.b2a_qp(b"hi\n" + uu)),
    ):
        report = scan_message(text_message(encoded, encoding), chunk_size=33, keep_parts=5)
        assert embedded(report) == [("x.bin", "uuencode", len(payload))], encoding


def test_padded_uuencode_lines_count_what_decoders_make_of_them() -> None:
    """'M' alone says 45 bytes and lenient decoders pad: 2 bytes of text, 45 of file."""
    raw = text_message(b"begin 600 pad.bin\n" + b"M\n" * 1000 + b"end\n")
    report = scan_message(raw, keep_parts=5)
    assert embedded(report) == [("pad.bin", "uuencode", 45_000)]
    assert report.largest is not None
    assert report.largest.decoded_bytes == 45_000
    verdict = attachment_verdict(report, 40_000, 20, "acme")
    assert verdict is not None
    assert '"pad.bin" (uuencode inside a text part) is' in verdict.reply()


def test_yenc_counts_its_data_or_its_declared_size() -> None:
    data = bytes(range(1, 200)).replace(b"=", b"") * 10
    raw = text_message(b"=ybegin line=128 size=1990 name=y.bin\n" + data + b"\n=yend size=1990\n")
    assert embedded(scan_message(raw, keep_parts=5)) == [("y.bin", "yenc", 1990)]
    claimed = text_message(b"=ybegin line=128 size=99999999 name=big.bin\nabc\n=yend\n")
    assert embedded(scan_message(claimed, keep_parts=5)) == [("big.bin", "yenc", 99999999)]


BINHEX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def binhexed(decoded: bytes) -> bytes:
    sixes = base64.b64encode(decoded).rstrip(b"=").translate(bytes.maketrans(BASE64, BINHEX))
    lines = b"\n".join(sixes[i : i + 64] for i in range(0, len(sixes), 64))
    return b"(This file must be converted with BinHex 4.0)\n:" + lines + b":\n"


def test_binhex_run_length_encoding_is_expanded() -> None:
    """BinHex compresses runs: 0x90 N repeats the last byte; a small text, a big file."""
    stream = b"\x08bomb.bin" + b"A" + (b"\x90\xff" + b"A") * 400 + b"\x90\x00"
    raw = text_message(b"Mac file:\n" + binhexed(stream) + b"thanks\n")
    expected = len(b"\x08bomb.bin") + 1 + 400 * 255 + 1
    for chunk in (1, 5, 64, 65536):
        report = scan_message(raw, chunk_size=chunk, keep_parts=5)
        assert embedded(report) == [("bomb.bin", "binhex", expected)]
        assert report.body_bytes < expected // 50


def test_several_embedded_files_and_text_around_them() -> None:
    finder = EmbeddedFileFinder()
    finder.feed(uuencoded(b"a" * 90, "a.bin") + b"text\n" + uuencoded(b"b" * 45, "b.bin"))
    assert [(found.name, found.decoded_bytes) for found in finder.finish()] == [
        ("a.bin", 90),
        ("b.bin", 45),
    ]


def test_text_that_only_mentions_begin_is_no_file() -> None:
    raw = text_message(b"begin here\nbegin 644\nthe =ybegin of it\n")
    assert embedded(scan_message(raw, keep_parts=5)) == []


def test_embedded_files_in_attachments_are_not_looked_for() -> None:
    raw = b"Content-Type: application/octet-stream\r\n\r\n" + uuencoded(b"z" * 450, "z.bin")
    assert embedded(scan_message(raw, keep_parts=5)) == []


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Type: text/plain\rContent-Type: multipart/mixed; boundary=B\r\n",
        b"X-Note: a\rContent-Type: multipart/mixed; boundary=B\r\n",
        b"Content-Type: application/zip;\r\n name=a\rb.zip\r\n",
    ],
)
def test_a_carriage_return_alone_in_part_headers_is_ambiguous(header: bytes) -> None:
    """The stdlib ends a line at a lone CR, so it would read another header there."""
    body = b"--A\r\n" + header + b"\r\n" + FILE + b"\r\n--A--\r\n"
    found = ambiguities(multipart(b"multipart/mixed; boundary=A", body))
    assert any("carriage return alone" in text for text in found), found
