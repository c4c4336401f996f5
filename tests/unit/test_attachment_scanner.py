"""Unit tests of the streaming attachment scanner: encodings, nesting, the cap,
chunk split points, filenames and malformed input."""

from __future__ import annotations

import base64
import binascii
import tracemalloc
from collections.abc import Iterator

import pytest

from sendwarden.attachments import (
    AttachmentScanner,
    Defect,
    PartSize,
    ScanReport,
    oversized_file,
    scan_message,
)
from sendwarden.attachments.decoders import (
    QP_CARRY_LIMIT,
    Base64Counter,
    QuotedPrintableCounter,
)
from sendwarden.attachments.scanner import MAX_LINE

BOUNDARY = b"b0und4ry"


def part(body: bytes, *headers: bytes, eol: bytes = b"\n") -> bytes:
    return eol.join([*headers, b"", body])


def multipart(
    *parts: bytes,
    boundary: bytes = BOUNDARY,
    eol: bytes = b"\n",
    subtype: bytes = b"mixed",
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """A multipart entity (headers included) with `parts` as given."""
    out = [b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"', b""]
    if preamble:
        out.append(preamble)
    for body in parts:
        out += [b"--" + boundary, body]
    out.append(b"--" + boundary + b"--")
    return eol.join(out) + eol + epilogue


def sizes(report: ScanReport) -> list[int]:
    return [p.decoded_bytes for p in report.parts if p.role == "part"]


def scan(raw: bytes, chunk_size: int = 65536, **kwargs: int) -> ScanReport:
    return scan_message(raw, chunk_size=chunk_size, keep_parts=1000, **kwargs)


def b64_part(data: bytes, eol: bytes = b"\n", line: int = 76, name: bytes = b"f.bin") -> bytes:
    encoded = base64.b64encode(data)
    lines = [encoded[i : i + line] for i in range(0, len(encoded), line)]
    return part(
        eol.join(lines),
        b"Content-Type: application/octet-stream; name=" + name,
        b"Content-Transfer-Encoding: base64",
        eol=eol,
    )


# -- encodings -------------------------------------------------------------------


@pytest.mark.parametrize("length", range(12))
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_base64_size_counts_padding_right(length: int, eol: bytes) -> None:
    report = scan(multipart(b64_part(b"x" * length, eol), eol=eol))
    assert sizes(report) == [length]


def test_base64_without_padding_or_with_odd_lines_and_junk() -> None:
    unpadded = base64.b64encode(b"hello").rstrip(b"=")  # 7 chars -> 5 bytes
    odd_lines = b"aGVs\r\n  bG8g\td29y bGQ=\n"  # "hello world", whitespace inside
    junk = b"aGVs*bG8g!d29y#bGQ=\n\x00\xff"  # junk is ignored
    raw = multipart(
        part(unpadded, b"Content-Transfer-Encoding: base64"),
        part(odd_lines, b"Content-Transfer-Encoding: BASE64"),
        part(junk, b"Content-Transfer-Encoding: base64"),
        # Not a bare token: compat32 leaves it encoded, so the raw size counts.
        part(junk, b"Content-Transfer-Encoding: base64 (comment)"),
    )
    report = scan(raw)
    assert sizes(report) == [5, 11, 11, len(junk)]
    assert Defect.BASE64_JUNK in report.defects


def test_base64_counter_never_decodes_and_keeps_counting_after_padding() -> None:
    counter = Base64Counter()
    for piece in (b"QQ==", b"QUJD", b"\r\n", b"QU"):  # '=' mid-stream does not end it
        counter.feed(piece)
    # 8 alphabet characters: 6 bytes. binascii stops at "QQ==" (1 byte); a decoder
    # that restarts after padding gets 1 + 3 + 1. Counting them all is never less.
    assert counter.decoded_bytes() == 6


QP_CASES = [
    b"plain text\n",
    b"soft=\nbreak=\r\nhere",
    b"caf=C3=A9 =3D =3d\n",
    b"bad =ZZ escape and == double\n",
    b"trailing equals=",
    b"equals then one =A",
    b"soft break with junk =\r  junk\nnext line\n",
    b"trailing spaces   \t\nline\n",
    b"=\r",
    b"a=" + b"=" * 9 + b"\n",
]


def canonical_qp(content: bytes) -> int:
    """a2b_qp's size with every bare LF counted as the CRLF it stands for (RFC 2045)."""
    decoded = binascii.a2b_qp(content)
    return len(decoded) + decoded.count(b"\n") - decoded.count(b"\r\n")


def test_a_bare_lf_in_quoted_printable_counts_as_crlf() -> None:
    for content, size in ((b"a\nb\n", 6), (b"a\r\nb\r\n", 6), (b"a=\r\nb", 2), (b"=0A", 2)):
        counter = QuotedPrintableCounter()
        counter.feed(content)
        assert counter.decoded_bytes() == size, content


def test_quoted_printable_counts_the_larger_of_a2b_qp_and_a_lenient_decoder() -> None:
    """a2b_qp reads "==" as "=", lenient decoders keep both; junk after a soft line
    break is dropped by a2b_qp, kept by lenient decoders; Rust's keeps "=" with the
    two characters after it when they are no escape. The larger reading counts."""
    for content, size in (
        (b"a==b\r\n", 6),
        (b"=ZZ\r\n", 5),
        (b"x=\rjunk\r\n", 9),
        (b"=41=42\r\n", 4),
        (b"==41\r\n", 6),  # a2b_qp: "=" + "41"; lenient: "==41" as it is
        # One escape at a time: "=4" then "A" (5); Rust's quoted_printable crate keeps
        # "=4=" whole, then "41" (7, what fast_mail_parser hands over).
        (b"=4=41\r\n", 7),
    ):
        counter = QuotedPrintableCounter()
        counter.feed(content)
        assert counter.decoded_bytes() == size, content
        assert size >= canonical_qp(content)


def whole(content: bytes) -> int:
    counter = QuotedPrintableCounter()
    counter.feed(content)
    return counter.decoded_bytes()


@pytest.mark.parametrize("content", QP_CASES)
def test_quoted_printable_counts_the_same_whatever_the_split(content: bytes) -> None:
    expected = whole(content)
    assert expected >= canonical_qp(content)
    for split in range(len(content) + 1):
        counter = QuotedPrintableCounter()
        counter.feed(content[:split])
        counter.feed(content[split:])
        assert counter.decoded_bytes() == expected, split
    counter = QuotedPrintableCounter()
    for byte in content:
        counter.feed(bytes([byte]))
    assert counter.decoded_bytes() == expected


@pytest.mark.parametrize(
    "line",
    [
        b"=41" * 3000,
        b"x" * 10_000 + b"=" * 7 + b"41",
        b"=" * 10_001 + b"41",
        b"y" * 5000 + b"=\rjunk" + b"z" * 9000,
        b"=4" * 5000 + b"1",
    ],
)
def test_quoted_printable_long_lines_are_counted_in_bounded_pieces(line: bytes) -> None:
    content = line + b"\nafter\n"
    for piece_size in (1000, QP_CARRY_LIMIT + 1, 7777):
        counter = QuotedPrintableCounter()
        for start in range(0, len(content), piece_size):
            counter.feed(content[start : start + piece_size])
            assert len(counter._carry) <= QP_CARRY_LIMIT + piece_size
        assert counter.decoded_bytes() == whole(content), piece_size
        assert counter.decoded_bytes() >= canonical_qp(content)


@pytest.mark.parametrize("cte", [b"7bit", b"8bit", b"binary", b"x-unknown", None])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_identity_encodings_count_bytes_and_the_delimiter_owns_the_line_break(
    cte: bytes | None, eol: bytes
) -> None:
    body = eol.join([b"line one \xe9\xff", b"", b"line three"])  # no final line break
    headers = [b"Content-Transfer-Encoding: " + cte] if cte else []
    report = scan(multipart(part(body, *headers, eol=eol), eol=eol))
    assert sizes(report) == [len(body)]
    assert report.parts[0].transfer_encoding == (cte.decode() if cte else "7bit")


def test_a_trailing_empty_line_before_the_delimiter_is_content() -> None:
    report = scan(multipart(part(b"text\n", b"Content-Type: text/plain")))
    assert sizes(report) == [5]


def test_non_multipart_message_body_keeps_its_last_line_break() -> None:
    scanner = AttachmentScanner()
    scanner.add_header("Content-Type", "text/plain")
    scanner.feed(b"hello\r\n")
    assert scanner.finish().largest == PartSize(None, "text/plain", 7, 7, "7bit", 0)


# -- nesting ---------------------------------------------------------------------


def test_nested_multiparts_and_attached_messages_count_every_leaf() -> None:
    attached = b"\n".join(
        [
            b"Content-Type: message/rfc822",
            b"",
            b"Subject: fwd",
            multipart(
                b64_part(b"z" * 300, name=b"deep.bin"),
                part(b"hi", b"Content-Type: text/plain"),
                boundary=b"inner2",
            ),
        ]
    )
    raw = multipart(
        part(b"body", b"Content-Type: text/plain"),
        multipart(b64_part(b"y" * 100), attached, boundary=b"inner1", subtype=b"related"),
        b64_part(b"x" * 50),
    )
    report = scan(raw)
    assert [(p.content_type, p.decoded_bytes, p.depth) for p in report.parts] == [
        ("text/plain", 4, 1),
        ("application/octet-stream", 100, 2),
        ("application/octet-stream", 300, 4),
        ("text/plain", 2, 4),
        ("application/octet-stream", 50, 1),
    ]
    assert report.largest is not None and report.largest.filename == "deep.bin"
    assert report.parts_seen == 5 and report.defects == ()


def test_digest_parts_default_to_attached_messages() -> None:
    raw = multipart(b"\nSubject: one\n\nfirst", b"\nSubject: two\n\nsecond!", subtype=b"digest")
    report = scan(raw)
    assert [(p.content_type, p.decoded_bytes, p.depth) for p in report.parts] == [
        ("text/plain", 5, 2),
        ("text/plain", 7, 2),
    ]


def test_preamble_and_epilogue_are_counted_but_are_not_parts() -> None:
    raw = multipart(part(b"x"), preamble=b"This is MIME.", epilogue=b"bye\n")
    report = scan(raw)
    assert [(p.role, p.decoded_bytes) for p in report.parts] == [
        ("preamble", 13),
        ("part", 1),
        ("epilogue", 4),
    ]
    assert report.parts_seen == 1


# -- the rule ----------------------------------------------------------------------


def test_the_cap_allows_exactly_max_bytes_and_refuses_one_more() -> None:
    cap = 3000
    at_cap = scan(multipart(b64_part(b"a" * cap)))
    over = scan(multipart(b64_part(b"a" * (cap + 1), name=b"big.bin")))
    assert oversized_file(at_cap, cap) is None
    hit = oversized_file(over, cap)
    assert hit is not None and hit.decoded_bytes == cap + 1 and hit.filename == "big.bin"


def test_the_cap_is_per_file_not_per_message() -> None:
    cap = 3000
    two_files = scan(multipart(b64_part(b"a" * 2000), b64_part(b"b" * 2000)))
    assert two_files.body_bytes > cap  # the message is bigger than the cap...
    assert oversized_file(two_files, cap) is None  # ...each file is not


def test_rule_on_an_empty_report() -> None:
    assert oversized_file(ScanReport(None, 0, False, (), 0), 0) is None


# -- chunk boundaries ------------------------------------------------------------

SMALL_MESSAGE = b"From: a@acme.example\r\n" + multipart(
    b64_part(b"0123456789" * 7, eol=b"\r\n"),
    part(b"caf=C3=A9=\r\n =3D end", b"Content-Transfer-Encoding: quoted-printable", eol=b"\r\n"),
    multipart(
        part(b"inner\r\n", b"Content-Type: text/plain", eol=b"\r\n"), boundary=b"in", eol=b"\r\n"
    ),
    eol=b"\r\n",
    preamble=b"pre",
)


def test_every_split_point_and_byte_by_byte_give_the_same_report() -> None:
    whole = scan(SMALL_MESSAGE, chunk_size=len(SMALL_MESSAGE))
    assert sizes(whole) == [70, 13, 7]  # quoted-printable: + the CRLF lenient decoders keep
    for split in range(len(SMALL_MESSAGE) + 1):
        scanner = AttachmentScanner(keep_parts=1000, headers_in_body=True)
        scanner.feed(SMALL_MESSAGE[:split])
        scanner.feed(SMALL_MESSAGE[split:])
        assert scanner.finish() == whole, split
    assert scan(SMALL_MESSAGE, chunk_size=1) == whole


def test_milter_api_headers_then_body_chunks() -> None:
    head, _, body = SMALL_MESSAGE.partition(b"\r\n\r\n")
    scanner = AttachmentScanner(keep_parts=1000)
    for line in head.split(b"\r\n"):
        name, _, value = line.decode().partition(":")
        scanner.add_header(name, value.strip())
    for start in range(0, len(body), 10):
        scanner.feed(body[start : start + 10])
    report = scanner.finish()
    assert report.parts == scan(SMALL_MESSAGE).parts
    assert report.body_bytes == len(body)
    assert scanner.finish() is report  # idempotent
    with pytest.raises(RuntimeError):
        scanner.feed(b"more")
    late = AttachmentScanner()
    late.feed(b"x")
    with pytest.raises(RuntimeError):
        late.add_header("Subject", "too late")


# -- filenames -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([b'Content-Disposition: attachment; filename="report.pdf"'], "report.pdf"),
        ([b"Content-Type: application/pdf; name=scan.pdf"], "scan.pdf"),
        (
            [
                b"Content-Type: a/b; name=ct.bin",
                b"Content-Disposition: attachment; filename=cd.bin",
            ],
            "cd.bin",
        ),
        (
            [b"Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.txt"],
            "\u20ac rates.txt",
        ),
        (
            [
                b"Content-Disposition: attachment;",
                b" filename*0*=iso-8859-1''caf%E9;",
                b' filename*1="-menu.pdf"',
            ],
            "caf\u00e9-menu.pdf",
        ),
        (
            [b'Content-Disposition: attachment; filename="=?utf-8?B?w6l0w6kucGRm?="'],
            "\u00e9t\u00e9.pdf",
        ),
        ([b'Content-Disposition: attachment; filename="a\\"b.txt"'], 'a"b.txt'),
        (
            [b"Content-Disposition: attachment; filename*=x-bogus''%41%0D%0AB.txt"],
            "A\ufffd\ufffdB.txt",
        ),
        ([b"Content-Type: text/plain"], None),
    ],
)
def test_filenames_are_decoded_and_made_printable(
    headers: list[bytes], expected: str | None
) -> None:
    report = scan(multipart(part(b"data", *headers)))
    assert report.parts[0].filename == expected


def test_other_headers_and_their_continuation_lines_are_skipped() -> None:
    headers = [
        b"X-Mailer: something",
        b" Content-Type: fake/continuation",
        b"Content-Id: <1@x>",
        b"content-TYPE: application/pdf;",
        b'\tname="real.pdf"',
        b"X-Other: 1",
        b"\tcontinued",
        b"Content-Transfer-Encoding: base64",
    ]
    raw = multipart(part(b"QUJD", *headers), part(b"QUJD", *headers, eol=b"\r\n"))
    report = scan(raw)
    assert [(p.content_type, p.filename, p.decoded_bytes) for p in report.parts] == [
        ("application/pdf", "real.pdf", 3),
        ("application/pdf", "real.pdf", 3),
    ]


def test_top_level_header_values_from_the_milter() -> None:
    scanner = AttachmentScanner()
    scanner.add_header("CONTENT-TYPE", 'application/zip;\r\n\tname="whole.zip"')
    scanner.add_header("Content-Transfer-Encoding", "base64")
    scanner.feed(base64.encodebytes(b"z" * 1000))
    largest = scanner.finish().largest
    assert largest is not None
    assert (largest.filename, largest.content_type, largest.decoded_bytes) == (
        "whole.zip",
        "application/zip",
        1000,
    )


# -- malformed input -------------------------------------------------------------


def test_missing_content_type_and_header_only_messages() -> None:
    assert sizes(scan(b"Subject: hi\n\nbody")) == [4]
    header_only = scan(b"Subject: hi\nContent-Type: multipart/mixed; boundary=x\n")
    assert header_only.parts_seen == 1 and header_only.largest is not None
    assert header_only.largest.decoded_bytes == 0
    milter = AttachmentScanner()
    milter.add_header("Subject", "no body")
    report = milter.finish()
    assert report.parts_seen == 1 and report.body_bytes == 0


def test_missing_start_boundary_counts_the_whole_body_as_one_part() -> None:
    body = base64.encodebytes(b"q" * 5000)
    raw = b"Content-Type: multipart/mixed; boundary=nope\n\n" + body
    report = scan(raw)
    assert sizes(report) == [len(body)]  # raw, not decoded: more, never less
    assert Defect.MISSING_START_BOUNDARY in report.defects


def test_unclosed_multipart_counts_to_the_end() -> None:
    closed = multipart(b64_part(b"a" * 10), b64_part(b"b" * 4000))
    raw = closed.rsplit(b"--" + BOUNDARY + b"--", 1)[0]
    report = scan(raw + b"QUJD\n")
    assert sizes(report) == [10, 4003]
    assert Defect.UNCLOSED_MULTIPART in report.defects


def test_an_outer_delimiter_ends_an_unclosed_inner_multipart() -> None:
    inner = b"Content-Type: multipart/mixed; boundary=inner\n\n--inner\n\nabc"
    report = scan(multipart(inner, part(b"xy")))
    assert sizes(report) == [3, 2]
    assert Defect.UNCLOSED_MULTIPART in report.defects


def test_boundary_text_inside_data_is_not_a_delimiter() -> None:
    encoded = base64.b64encode(b"k" * 300)
    tricky = b"\n".join(
        [
            encoded[:40] + b"--" + BOUNDARY + encoded[40:80],  # not at a line start
            b"--" + BOUNDARY + b"x",  # longer than the delimiter
            b" --" + BOUNDARY,  # indented
            b"--" + BOUNDARY[:-1],  # shorter
            encoded[80:],
        ]
    )
    report = scan(multipart(part(tricky, b"Content-Transfer-Encoding: base64")))
    assert report.parts_seen == 1
    counter = Base64Counter()
    counter.feed(tricky)
    assert sizes(report) == [counter.decoded_bytes()]


def test_delimiters_with_trailing_whitespace_and_repeated_delimiters() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=bb\r\n\r\n"
        b"--bb \t\r\n\r\none\r\n--bb\r\n--bb\r\n\r\ntwo\r\n--bb-- \r\n"
    )
    assert sizes(scan(raw)) == [3, 3]  # "--bb" twice makes no empty part


def test_a_delimiter_padded_past_the_line_cap_is_still_a_delimiter() -> None:
    padding = b" " * (3 * MAX_LINE)
    raw = multipart(part(b"first"), part(b"second")).replace(
        b"--" + BOUNDARY + b"\n", b"--" + BOUNDARY + padding + b"\n"
    )
    for chunk_size in (100, 4096, 65536):
        assert sizes(scan(raw, chunk_size)) == [5, 6]


def test_a_long_line_that_only_starts_like_a_delimiter_is_content() -> None:
    line = b"--" + BOUNDARY + b" " * (2 * MAX_LINE) + b"not a delimiter"
    raw = multipart(part(b"a\n" + line))
    for chunk_size in (100, 65536):
        assert sizes(scan(raw, chunk_size)) == [2 + len(line)]


def test_depth_cap_is_reported_and_the_deep_part_is_counted_whole() -> None:
    raw = part(b"x" * 100, b"Content-Type: text/plain")
    for level in range(30):
        raw = multipart(raw, boundary=b"level%d" % level)
    report = scan(raw, max_depth=5)
    assert report.depth_exceeded and Defect.DEPTH_EXCEEDED in report.defects
    assert report.parts_seen == 1
    assert report.largest is not None and report.largest.decoded_bytes > 100  # counted raw
    assert scan(raw, max_depth=31).depth_exceeded is False


def test_thousands_of_parts_keep_the_report_bounded() -> None:
    raw = multipart(*[part(b"p" * (i % 97)) for i in range(5000)])
    scanner = AttachmentScanner(keep_parts=10, headers_in_body=True)
    scanner.feed(raw)
    report = scanner.finish()
    assert report.parts_seen == 5000 and len(report.parts) == 10
    assert report.largest is not None and report.largest.decoded_bytes == 96


def test_garbage_and_eight_bit_headers_do_not_raise() -> None:
    garbage_part = b"Content-Type: \x00\x01/\xff; name*=\x00''%ZZ\n\n\xff\x80\n"
    raw = (
        b"Content-Type: multipart/mixed; boundary=\xff\xfe\n\n"
        + (b"--\xff\xfe\n" + garbage_part) * 3
        + b"--\xff\xfe--\n"
    )
    report = scan(raw)
    assert report.parts_seen == 3
    assert report.parts[0].content_type == "\ufffd\ufffd/\ufffd"  # safe to print


def test_multipart_without_boundary_is_one_part() -> None:
    report = scan(b"Content-Type: multipart/mixed\n\n--x\nhello\n--x--\n")
    assert sizes(report) == [len(b"--x\nhello\n--x--\n")]
    assert Defect.MULTIPART_WITHOUT_BOUNDARY in report.defects


def test_encoded_attached_message_is_counted_as_one_decoded_part() -> None:
    inner = b"Subject: x\n\n" + b"y" * 999
    raw = part(
        base64.encodebytes(inner),
        b"Content-Type: message/rfc822",
        b"Content-Transfer-Encoding: base64",
    )
    report = scan(raw)
    assert sizes(report) == [len(inner)]
    assert Defect.ENCODED_CONTAINER in report.defects


def test_long_header_lines_are_truncated_not_buffered() -> None:
    raw = multipart(
        part(
            b"data",
            b"Content-Type: text/plain; x=" + b"y" * (5 * MAX_LINE),
            b"X-Long: " + b"z" * (5 * MAX_LINE),
        )
    )
    for chunk_size in (1000, 65536):
        report = scan(raw, chunk_size)
        assert sizes(report) == [4]
        assert Defect.LONG_HEADER in report.defects


def test_a_100_mb_class_single_base64_line_is_counted_in_pieces() -> None:
    """One base64 line far longer than the line cap (8 MB here, same code path
    as 100 MB), fed in 64 KiB chunks: counted exactly, never buffered."""
    piece = base64.b64encode(bytes(range(256)) * 192)  # 64 KiB of base64, no line breaks
    head = multipart(b"PLACEHOLDER").split(b"PLACEHOLDER")[0]
    scanner = AttachmentScanner(headers_in_body=True)
    tracemalloc.start()
    try:
        scanner.feed(head + b"Content-Transfer-Encoding: base64\n\n")
        for _ in range(128):
            scanner.feed(piece)
        scanner.feed(b"\n--" + BOUNDARY + b"--\n")
        report = scanner.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.largest is not None and report.largest.decoded_bytes == 128 * 256 * 192
    assert peak < 1_000_000


# -- a real-size attachment, streamed ------------------------------------------------

MIB = 1024 * 1024
CAP = 20 * MIB


def streamed_base64_message(
    decoded_size: int, eol: bytes = b"\r\n"
) -> tuple[list[tuple[str, str]], Iterator[bytes]]:
    """(header fields, body chunks) of a message with one base64 file of exactly
    `decoded_size` bytes, generated block by block (never the whole thing)."""
    headers = [("From", "alice@acme.example"), ("Content-Type", 'multipart/mixed; boundary="big"')]

    def body() -> Iterator[bytes]:
        yield eol.join(
            [
                b"--big",
                b"Content-Type: text/plain",
                b"",
                b"see attached",
                b"--big",
                b"Content-Type: video/mp4; name=holiday.mp4",
                b"Content-Transfer-Encoding: base64",
                b"",
                b"",
            ]
        )
        block = bytes(range(256)) * 228  # 57 * 1024 bytes: whole 76-character lines
        encoded = base64.encodebytes(block).replace(b"\n", eol)
        full, rest = divmod(decoded_size, len(block))
        for _ in range(full):
            yield encoded
        yield base64.encodebytes(block[:rest]).replace(b"\n", eol)
        yield b"--big--" + eol

    return headers, body()


@pytest.mark.parametrize(
    ("decoded_size", "over"), [(CAP, False), (CAP + 1, True), (25 * MIB, True)]
)
def test_real_size_attachment_against_the_20_mib_cap_in_small_memory(
    decoded_size: int, over: bool
) -> None:
    headers, chunks = streamed_base64_message(decoded_size)
    scanner = AttachmentScanner()
    tracemalloc.start()
    try:
        for name, value in headers:
            scanner.add_header(name, value)
        for chunk in chunks:
            for start in range(0, len(chunk), 65536):  # the milter's body chunk size
                scanner.feed(chunk[start : start + 65536])
        report = scanner.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.body_bytes > decoded_size * 4 // 3  # the message itself is bigger
    hit = oversized_file(report, CAP)
    assert (hit is not None) is over
    assert report.largest is not None
    assert (report.largest.filename, report.largest.decoded_bytes) == ("holiday.mp4", decoded_size)
    assert peak < 1_000_000, peak
