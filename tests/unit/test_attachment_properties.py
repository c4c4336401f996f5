"""Property tests of the attachment scanner.

Differential: for MIME messages built by the stdlib `email` package, every leaf
part's decoded size equals what the stdlib parser decodes. Fuzz: mutated messages
never make the scanner raise, and its memory stays flat on a multi-MB message.
"""

from __future__ import annotations

import io
import re
import tracemalloc
from email import message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendwarden.attachments import AttachmentScanner, PartSize, ScanReport, scan_message

LINESEPS = st.sampled_from(["\n", "\r\n"])
ASCII_TEXT = st.text(
    alphabet=st.characters(min_codepoint=9, max_codepoint=126, exclude_characters="\r\x0b\x0c"),
    max_size=300,
)
ANY_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r"), max_size=300
)
FILENAMES = (
    st.none()
    | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9 _.-]{0,20}", fullmatch=True)
    | (
        st.text(
            alphabet=st.characters(min_codepoint=0xA0, max_codepoint=0x2FF), min_size=1, max_size=8
        )
    )
)


@st.composite
def leaves(draw: st.DrawFn) -> EmailMessage:
    part = EmailMessage()
    filename = draw(FILENAMES)
    kind = draw(st.sampled_from(["bytes", "text"]))
    if kind == "bytes":
        payload = draw(st.binary(max_size=600))
        cte = draw(st.sampled_from(["base64", "quoted-printable"]))
        subtype = draw(st.sampled_from(["octet-stream", "pdf", "zip"]))
        part.set_content(payload, "application", subtype, cte=cte, filename=filename)
    else:
        cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
        text = draw(ASCII_TEXT if cte == "7bit" else ANY_TEXT)
        subtype = draw(st.sampled_from(["plain", "html", "csv"]))
        part.set_content(text, subtype=subtype, cte=cte, filename=filename)
    return part


def _container(children: list[EmailMessage], kind: str, preamble: str | None) -> EmailMessage:
    if kind == "rfc822":
        wrapper = EmailMessage()
        inner = children[0] if children else EmailMessage()
        inner["Subject"] = "attached"
        wrapper.set_content(inner)
        return wrapper
    multipart = EmailMessage()
    multipart["Content-Type"] = f"multipart/{kind}"
    for child in children:
        multipart.attach(child)
    if preamble is not None:
        multipart.preamble = preamble
    return multipart


def messages() -> st.SearchStrategy[EmailMessage]:
    return st.recursive(
        leaves(),
        lambda children: st.builds(
            _container,
            st.lists(children, min_size=1, max_size=4),
            st.sampled_from(["mixed", "alternative", "related", "rfc822"]),
            st.none() | ASCII_TEXT,
        ),
        max_leaves=10,
    )


def flatten(message: EmailMessage, linesep: str) -> bytes:
    out = io.BytesIO()
    BytesGenerator(out, policy=email_policy.default.clone(linesep=linesep)).flatten(message)
    return out.getvalue()


def stdlib_leaves(raw: bytes) -> list[tuple[str, int, str | None]]:
    """Every leaf's size as the stdlib decodes it, adjusted for the two readings the
    scanner adds for quoted-printable: a bare LF counts as CRLF, and a part that a
    delimiter ends keeps the line break before it (2 bytes), as lenient decoders do."""
    leaves: list[tuple[str, int, str | None]] = []

    def visit(part: Message, in_multipart: bool) -> None:
        if part.is_multipart():
            for child in part.iter_parts() if isinstance(part, EmailMessage) else []:
                visit(child, in_multipart or part.get_content_maintype() == "multipart")
            return
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        size = len(payload)
        if part.get("content-transfer-encoding", "").lower() == "quoted-printable":
            size += payload.count(b"\n") - payload.count(b"\r\n") + (2 if in_multipart else 0)
        leaves.append((part.get_content_type(), size, part.get_filename()))

    visit(message_from_bytes(raw, policy=email_policy.default), False)
    return leaves


def scanned_leaves(report: ScanReport) -> list[tuple[str, int, str | None]]:
    return [
        (part.content_type, part.decoded_bytes, part.filename)
        for part in report.parts
        if part.role == "part"
    ]


def check_invariants(report: ScanReport, body_bytes: int) -> None:
    assert report.parts_seen >= 0
    assert report.body_bytes == body_bytes
    encoded = 0
    for part in report.parts:
        assert report.largest is not None
        assert 0 <= part.decoded_bytes <= report.largest.decoded_bytes
        if part.role == "embedded":
            continue  # a file inside a text part: its bytes are the part's, counted there
        # Decoding never grows content, except quoted-printable: a bare LF counts as CRLF,
        # and the line break before the delimiter that ends it counts too.
        if part.transfer_encoding == "quoted-printable":
            assert part.decoded_bytes <= part.encoded_bytes * 2 + 2
        else:
            assert part.decoded_bytes <= part.encoded_bytes
        encoded += part.encoded_bytes
    assert encoded <= body_bytes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages(), linesep=LINESEPS, chunk_size=st.integers(1, 300))
def test_decoded_sizes_match_the_stdlib_parser(
    message: EmailMessage, linesep: str, chunk_size: int
) -> None:
    message["From"] = "alice@acme.example"
    raw = flatten(message, linesep)
    report = scan_message(raw, chunk_size=chunk_size, keep_parts=1000)
    assert scanned_leaves(report) == stdlib_leaves(raw)
    assert report.parts_seen == len(stdlib_leaves(raw))
    assert report.defects == ()
    check_invariants(report, len(raw))


@settings(max_examples=40, deadline=None)
@given(message=messages(), linesep=LINESEPS)
def test_milter_feeding_matches_whole_message_scan(message: EmailMessage, linesep: str) -> None:
    """Header fields through add_header(), body in chunks: same result."""
    raw = flatten(message, linesep)
    head, sep, body = raw.partition(linesep.encode() * 2)
    assert sep
    scanner = AttachmentScanner(keep_parts=1000)
    parsed = message_from_bytes(head + sep, policy=email_policy.compat32)
    for name, value in parsed.items():
        scanner.add_header(name, re.sub(r"\r?\n", "", value))
    for start in range(0, len(body), 64):
        scanner.feed(body[start : start + 64])
    assert scanned_leaves(scanner.finish()) == stdlib_leaves(raw)


# -- fuzz -----------------------------------------------------------------------

BOUNDARY = re.compile(rb'boundary="([^"]+)"')


@st.composite
def mutated(draw: st.DrawFn, raw: bytes, max_mutations: int = 8) -> bytes:
    data = bytearray(raw)
    boundaries = BOUNDARY.findall(raw) or [b"none"]
    for _ in range(draw(st.integers(0, max_mutations))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "truncate", "insert_boundary", "insert", "cut"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[at:]
        elif action == "insert_boundary":
            boundary = draw(st.sampled_from(boundaries))
            ending = draw(st.sampled_from([b"", b"--", b"  ", b"x"]))
            eol = draw(st.sampled_from([b"\n", b"\r\n", b""]))
            data[at:at] = b"\n--" + boundary + ending + eol
        elif action == "insert":
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"\n\n",
                        b"=",
                        b"=\r",
                        b"\r",
                        b"Content-Type: multipart/mixed\n",
                        b"Content-Transfer-Encoding: base64\n",
                        b"\xff\xfe\x00",
                    ]
                )
            )
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 200))]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), linesep=LINESEPS, chunk_size=st.integers(2, 500))
def test_mutated_messages_never_raise(data: st.DataObject, linesep: str, chunk_size: int) -> None:
    raw = flatten(data.draw(messages()), linesep)
    broken = data.draw(mutated(raw))
    report = scan_message(broken, chunk_size=chunk_size, keep_parts=10_000, max_depth=4)
    check_invariants(report, len(broken))


def _big_message() -> bytes:
    root = EmailMessage()
    root["From"] = "alice@acme.example"
    root.set_content("see attached\n" * 100)
    blob = bytes(range(256)) * 4096  # 1 MiB
    for index in range(3):
        root.add_attachment(blob, "application", "octet-stream", filename=f"f{index}.bin")
    root.add_attachment(
        ("line =\u00e9 " * 20 + "\n") * 2000, subtype="plain", cte="quoted-printable"
    )
    inner = EmailMessage()
    inner.set_content("inner\n")
    inner.add_attachment(blob, "application", "zip", filename="inner.zip")
    root.add_attachment(inner)
    return flatten(root, "\r\n")


BIG_MESSAGE = _big_message()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken=mutated(BIG_MESSAGE, max_mutations=20), chunk_size=st.sampled_from([1000, 65536]))
def test_mutated_big_message_scans_in_bounded_memory(broken: bytes, chunk_size: int) -> None:
    assert len(broken) > 2_000_000 or len(broken) < len(BIG_MESSAGE)
    tracemalloc.start()
    try:
        report = scan_message(broken, chunk_size=chunk_size, keep_parts=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_invariants(report, len(broken))
    assert peak < 1_500_000, f"peak {peak} bytes for a {len(broken)} byte message"


def test_unmutated_big_message_matches_stdlib() -> None:
    report = scan_message(BIG_MESSAGE, keep_parts=100)
    assert scanned_leaves(report) == stdlib_leaves(BIG_MESSAGE)
    largest = report.largest
    assert isinstance(largest, PartSize)
    assert largest.decoded_bytes == 1 << 20


# -- chunking never changes the result ----------------------------------------

SOUP_TOKENS = [
    b"Content-Type: multipart/mixed; boundary=b1\n",
    b'Content-Type: multipart/digest; boundary="b2"\r\n',
    b"Content-Type: message/rfc822\n",
    b"Content-Type: text/plain; name*0*=utf-8''%E2%82; name*1*=%AC.txt\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Disposition: attachment; filename="x.bin"\n',
    b" continued\n",
    b"\tname=folded.bin\n",
    b"X-Other: 1\n",
    b"content-TYPE: multipart/mixed; boundary=b1\n",
    b"Content-Type: application/x;\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"--b1\n",
    b"--b1--\n",
    b"--b2\r\n",
    b"--b2--",
    b"--b1  \t\r\n",
    b"--b1x\n",
    b"--b1" + b" " * 9000 + b"\n",
    b"--b2" + b"\t" * 9000 + b"x\n",
    b"Content-Type: x/y" + b" " * 9000 + b"\n",
    b"QUJDRA==\n",
    b"QUJ",
    b"=3D",
    b"=\n",
    b"=",
    b"==",
    b"=\r",
    b"=\rjunk",
    b"A" * 10_000,
    b"=" * 5001,
    b"\xff\x00\x80",
    b"Subject: x\n",
    b"From foo\n",
    b"-",
    b"--",
    b":",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(st.sampled_from(SOUP_TOKENS), max_size=40),
    chunk_size=st.integers(1, 3000),
    max_depth=st.integers(1, 6),
)
def test_chunk_split_points_never_change_the_report(
    tokens: list[bytes], chunk_size: int, max_depth: int
) -> None:
    raw = b"".join(tokens)
    whole = scan_message(raw, chunk_size=len(raw) + 1, keep_parts=10_000, max_depth=max_depth)
    split = scan_message(raw, chunk_size=chunk_size, keep_parts=10_000, max_depth=max_depth)
    assert split == whole
    check_invariants(split, len(raw))
