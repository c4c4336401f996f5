"""The streaming relaxed body hash must equal dkimpy's canonicalization of the whole
body, however the MTA cuts the body into chunks."""

from __future__ import annotations

import hashlib
import re

from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.dkim.canon import RelaxedBodyHash


def dkimpy_body_hash(body: bytes) -> bytes:
    """What dkimpy hashes: its line splitting (rfc822_parse), then Relaxed."""
    normalised = b"\r\n".join(re.split(rb"\r?\n", body))
    return hashlib.sha256(Relaxed.canonicalize_body(normalised)).digest()


def streamed(body: bytes, cuts: list[int], long_line: int = 64 * 1024) -> bytes:
    hasher = RelaxedBodyHash(long_line=long_line)
    start = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(body):
            hasher.update(body[start:cut])
            start = cut
    hasher.update(body[start:])
    return hasher.digest()


TABLE = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"hello\r\n",
    b"hello",
    b"hello  \t \r\n",
    b"a  b\t\tc \r\n\r\n \r\n\t\r\n",
    b"\r\n\r\nstart after empty lines\r\n",
    b"bare\nline\nfeeds\n\n",
    b"cr\ralone\r\r\nand\r",
    b"  leading space\r\n",
    b"trailing no crlf   ",
    b"x" * 200 + b"   " + b"y" * 200 + b" \r\n",
]


def test_table_against_dkimpy() -> None:
    for body in TABLE:
        for cuts in ([], [1], [2, 3], list(range(len(body)))):
            assert streamed(body, cuts) == dkimpy_body_hash(body), (body, cuts)
            assert streamed(body, cuts, long_line=4) == dkimpy_body_hash(body), (body, cuts)


BODY_BYTES = st.lists(
    st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b"."]),
    max_size=80,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(body=BODY_BYTES, cuts=st.lists(st.integers(0, 80), max_size=8), long_line=st.integers(1, 9))
def test_random_bodies_and_chunkings(body: bytes, cuts: list[int], long_line: int) -> None:
    expected = dkimpy_body_hash(body)
    assert streamed(body, cuts) == expected
    assert streamed(body, cuts, long_line=long_line) == expected


def test_a_large_body_in_milter_sized_chunks() -> None:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=  \r\n"
    body = line * 50_000 + b"\r\n" * 3
    cuts = list(range(65535, len(body), 65535))
    assert streamed(body, cuts) == dkimpy_body_hash(body)
