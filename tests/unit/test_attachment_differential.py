"""Differential fuzz: the scanner against three independent readings of the same bytes.

For generated messages, and the same messages mutated the way a hostile sender
would (boundaries given twice or in RFC 2231 form, odd quoting and comments,
duplicate Content-Type or Content-Transfer-Encoding headers, encodings on
multiparts, blanks before a colon, plus random byte damage), the largest file that
the stdlib `email` package decodes under its compat32 and default policies, and that
fast_mail_parser (a Rust MIME parser, independent of the stdlib) decodes, is at most
what the scanner counted -- or the scanner refused the message as ambiguous.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message

import fast_mail_parser
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from sendwarden.attachments import scan_message
from tests.unit.test_attachment_properties import LINESEPS, flatten, messages, mutated


def stdlib_largest(raw: bytes, policy: email_policy.Policy) -> int:
    parsed = message_from_bytes(raw, policy=policy)
    largest = 0
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = _payload(part)
        largest = max(largest, len(payload))
    return largest


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    return b""


def rust_largest(raw: bytes) -> int:
    """fast_mail_parser's reading; a message it cannot parse at all decodes no file."""
    try:
        tree = fast_mail_parser.parse_email_tree(raw)
    except Exception:
        return 0
    largest = 0
    for node in fast_mail_parser.walk(tree):
        if not node.children:
            largest = max(largest, len(node.content or b""))
    return largest


def note(text: str) -> None:
    """Count an outcome in hypothesis's statistics (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(text)


def check(raw: bytes) -> None:
    report = scan_message(raw, chunk_size=977)
    if report.ambiguities:
        note("refused as ambiguous")
        return  # refused with 554 5.6.0: no reading reaches anyone
    note("one reading: compared")
    counted = report.largest.decoded_bytes if report.largest else 0
    readings = {
        "compat32": stdlib_largest(raw, email_policy.compat32),
        "default": stdlib_largest(raw, email_policy.default),
        "fast_mail_parser": rust_largest(raw),
    }
    for parser, largest in readings.items():
        assert largest <= counted, f"{parser} decodes {largest} bytes, scanner counted {counted}"


CONTENT_TYPE = re.compile(rb"(?im)^content-type:[^\n]*\n(?:[ \t][^\n]*\n)*")
BOUNDARY_PARAM = re.compile(rb'boundary="([^"]+)"')

#: Ways a hostile sender makes a header read two ways; each is (pattern, replacement)
#: applied to one Content-Type header (or inserted after it).
TWISTS: list[tuple[str, bytes]] = [
    ("param", b"; boundary*=\\1x"),
    ("param", b"; boundary*0=\\1x"),
    ("param", b'; boundary="\\1x"'),
    ("param", b"; boundary=\\1"),
    ("param", b" (comment)"),
    ("param", b'; boundary="\\1'),
    ("param", b"; charset=x=y"),
    ("unquote", b"boundary=\\1"),
    ("escape", b'boundary="\\\\\\1"'),
    ("comment", b"boundary=\\1(x)"),
    ("header", b"Content-Type: application/octet-stream\n"),
    ("header", b"Content-Type: text/plain; boundary=other\n"),
    ("header", b"Content-Transfer-Encoding: base64\n"),
    ("header", b"Content-Transfer-Encoding: quoted-printable\n"),
    ("header", b"Content-Transfer-Encoding: base64 (x)\n"),
    ("header", b"Content-Type : multipart/mixed; boundary=zz\n"),
    ("header", b"Content-Type: message/partial; id=x; number=1\n"),
    ("spacecolon", b"Content-Type :"),
    ("casing", b"CONTENT-type:"),
]


@st.composite
def twisted(draw: st.DrawFn, raw: bytes) -> bytes:
    data = raw
    for _ in range(draw(st.integers(1, 3))):
        headers = list(CONTENT_TYPE.finditer(data))
        if not headers:
            return data
        header = draw(st.sampled_from(headers))
        kind, replacement = draw(st.sampled_from(TWISTS))
        text = header.group(0)
        boundary = BOUNDARY_PARAM.search(text)
        value = boundary.group(1) if boundary else b"b"
        filled = replacement.replace(b"\\1", value)
        if kind == "param":
            new = text.rstrip(b"\r\n") + filled + text[len(text.rstrip(b"\r\n")) :]
        elif kind in ("unquote", "escape", "comment"):
            new = BOUNDARY_PARAM.sub(lambda _m, f=filled: f, text, count=1)
        elif kind == "header":
            new = text + filled
        else:
            new = filled + text[len(b"content-type:") :]
        data = data[: header.start()] + new + data[header.end() :]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), linesep=LINESEPS)
def test_no_parser_decodes_a_bigger_file_than_the_scanner_counted(
    data: st.DataObject, linesep: str
) -> None:
    message = data.draw(messages())
    message["From"] = "alice@acme.example"
    raw = flatten(message, linesep)
    if data.draw(st.booleans()):
        raw = data.draw(twisted(raw))
    if data.draw(st.booleans()):
        raw = data.draw(mutated(raw, max_mutations=4))
    check(raw)


#: The report's case: plain boundary next to boundary*; the scanner splits at one,
#: the stdlib default policy at the other and decodes one big file.
ISSUE_CASE = (
    b"From: a@acme.example\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary*=''big; boundary=small\r\n\r\n"
    b"--big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b"QUJD\r\n--small\r\n\r\n" * 200
    + b"--big--\r\n"
)


def test_the_reported_boundary_star_case_is_refused() -> None:
    assert scan_message(ISSUE_CASE).ambiguities
    check(ISSUE_CASE)
    assert stdlib_largest(ISSUE_CASE, email_policy.default) > stdlib_largest(
        ISSUE_CASE, email_policy.compat32
    )


@pytest.mark.parametrize(
    "body",
    [b"=\x002=80\n", b"=2=80\n", b"=G1=41\n", b"a\x00b=3D=\n", b"=41 \t\n==80\n"],
)
def test_quoted_printable_as_rust_reads_it_is_counted(body: bytes) -> None:
    """fast_mail_parser (the quoted_printable crate) drops bytes that are not printable
    ASCII and keeps "=" with the two characters after it when they are no escape
    ("=2=80" stays whole, where one escape at a time reads "=2" and "=80"): found by
    the differential test above."""
    check(
        b'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: '
        b"quoted-printable\nMIME-Version: 1.0\nFrom: alice@acme.example\n\n" + body
    )


#: Found by the test above: a misspelt message subtype (fast_mail_parser reads the
#: body as one file, the stdlib as a message inside), and a multipart whose boundary
#: line is broken (the stdlib keeps the line break before the next delimiter).
FOUND_CASES = [
    b"Content-Type: message/Afc822\nContent-Transfer-Encoding: 8bit\nMIME-Version: 1.0\n"
    b"From: alice@acme.example\n\nContent-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: base64\nMIME-Version: 1.0\nSubject: attached\n\n"
    + b"QUJD" * 30
    + b"\n",
    b'Content-Type: multipart/related; boundary="out"\nFrom: alice@acme.example\n\n'
    b'--out\nContent-Type: multipart/related;\n\x00boundary="in"\n\n--in\n'
    b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    b"QUJD\n--in--\n\n--out--\n",
]


@pytest.mark.parametrize("raw", FOUND_CASES)
def test_found_readings_are_counted(raw: bytes) -> None:
    check(raw)


def test_a_line_that_starts_with_a_delimiter_and_goes_on_is_refused() -> None:
    """fast_mail_parser splits there (RFC 2046 compares the start of a line) and reads
    a part the stdlib counts as base64 junk: found by the differential test."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\nFrom: alice@acme.example\n\n'
        b"--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        b"QUJD\n--bMIME-Version: 1.0\n\n" + b"x" * 40 + b"\n--b--\n"
    )
    assert scan_message(raw).ambiguities
    check(raw)
