"""The signer's own relaxed header canonicalization against dkimpy's, on generated
headers: the same bytes hashed, so the same signature, whatever the sender wrote
(folding with CRLF, bare LF or bare CR, blanks of every kind, names with trailing
blanks or in any case, repeated and missing headers, non-ASCII and undecodable bytes).

The reference is the signer as it was before (dkimpy's ``canonicalize_headers`` over
every header and its ``hash_headers``); RSA PKCS#1 v1.5 is deterministic, so the
whole signature header must come out byte for byte the same.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

import dkim
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendwarden.dkim.signer import (
    HEADER_NAME,
    SIGNED_HEADERS,
    SigningKey,
    dkim_signature,
    header_hash,
    signature_fields,
    signed_names,
)
from tests.unit.test_dkim_signer import KEYS

_NEWLINE = re.compile(rb"\r?\n")
_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def dkimpy_header_hash(
    headers: Sequence[tuple[str, str]], signed: Sequence[bytes], signature_value: bytes
) -> bytes:
    """dkimpy's way: every header canonicalized, then ``hash_headers`` selects."""
    raw_headers = [
        [
            name.encode("ascii", "surrogateescape"),
            b" " + _NEWLINE.sub(b"\r\n", value.encode("utf-8", "surrogateescape")) + b"\r\n",
        ]
        for name, value in headers
    ]
    digest = hashlib.sha256()
    dkim.hash_headers(
        digest,
        _POLICY,
        _POLICY.canonicalize_headers(raw_headers),
        list(signed),
        (HEADER_NAME, signature_value),
        {},
    )
    return digest.digest()


def dkimpy_signature(
    headers: Sequence[tuple[str, str]], body_hash: bytes, key: SigningKey, timestamp: int
) -> str:
    """The signer's ``dkim_signature`` as it was, on dkimpy's canonicalization (the
    tags are built alike: that is not what this test compares)."""
    signed = signed_names(headers)
    fields = signature_fields(key, timestamp, signed, body_hash)
    value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(HEADER_NAME))
    signature_header = b" " + dkim.RE_BTAG.sub(b"\\1", value)
    digest = dkimpy_header_hash(headers, signed, signature_header)
    rsa = key.signing_key.sign(digest, PKCS1v15(), Prehashed(SHA256()))
    fields[-1] = (b"b", base64.b64encode(rsa))
    value = bytes(dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(HEADER_NAME)))
    return value.strip().replace(b"\r\n", b"\n").decode("ascii")


def outcome(function: object, *args: object) -> object:
    """The result, or the kind of error: both ways must fail alike too."""
    try:
        return function(*args)  # type: ignore[operator]
    except Exception as error:  # compared, not swallowed
        return type(error)


NAMES = st.one_of(
    st.sampled_from(SIGNED_HEADERS).map(
        lambda name: name  # as dkimpy lowers them, in any case and with trailing blanks
    ),
    st.sampled_from(["From", "FROM", "fRoM", "From ", "From\t", " From", "To ", "Subject"]),
    st.sampled_from(["Received", "X-Spaces", "DKIM-Signature", "Fr\u00f6m", "Fr\udcc3\udcb6m"]),
    st.text(alphabet="fromFROMtsubject- \t:\udcff", max_size=8),
)
VALUE_PIECES = st.sampled_from(
    ["a", "B", " ", "  ", "\t", "\r", "\n", "\r\n", "\r\n\t", "\n ", "\r\r\n", "\x0b", "\x0c",
     "\u00e9", "\udcc3\udca9", "\udcff", "<x@acme.example>", ",", ";", "b=", "\u2028", "\x00"]
)  # fmt: skip
VALUES = st.lists(VALUE_PIECES, max_size=12).map("".join)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
SIGNED = st.lists(
    st.sampled_from([name.encode() for name in SIGNED_HEADERS] + [b"received", b"x-spaces"]),
    max_size=8,
)
SIGNATURE_VALUES = st.lists(
    st.sampled_from([b"v=1", b"; ", b"b=", b"abc+/=", b"\r\n ", b"\n\t", b" ", b"\t", b"h=from"]),
    max_size=10,
).map(b"".join)


@settings(max_examples=400)
@given(HEADERS, SIGNED, SIGNATURE_VALUES)
@example([("From ", "x"), ("from", "y")], [b"from", b"from"], b" v=1; b=")
@example([("To", "a\r\r\nb\n\r\n c")], [b"to"], b" b=\r\n abc")
def test_header_hash_is_dkimpys(
    headers: list[tuple[str, str]], signed: list[bytes], signature_value: bytes
) -> None:
    assert outcome(header_hash, headers, signed, signature_value) == outcome(
        dkimpy_header_hash, headers, signed, signature_value
    )


@settings(max_examples=150, deadline=None)
@given(HEADERS, st.binary(min_size=32, max_size=32), st.integers(0, 2**33))
def test_signature_is_byte_for_byte_dkimpys(
    headers: list[tuple[str, str]], body_hash: bytes, timestamp: int
) -> None:
    key = KEYS["acme.example"]
    assert outcome(dkim_signature, headers, body_hash, key, timestamp) == outcome(
        dkimpy_signature, headers, body_hash, key, timestamp
    )
