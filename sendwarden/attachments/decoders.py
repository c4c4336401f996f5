"""Size counters for the content of one MIME leaf part, one per transfer encoding.

A counter is fed the part's encoded content in pieces of any size and split point
and knows the decoded size at the end. None of them keeps the content: base64 is
counted from the number of alphabet characters, quoted-printable is decoded a line
batch at a time and thrown away, anything else is counted as it is.
"""

from __future__ import annotations

import re
from binascii import a2b_qp
from typing import Protocol

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_IGNORABLE = b" \t\r\n="
#: Partial quoted-printable lines longer than this are decoded in pieces, not held.
QP_CARRY_LIMIT = 4096
#: An escape that starts a soft line break with junk after it ("=\r..."): a2b_qp
#: drops everything up to the next newline. Odd run of '=' = the last one escapes.
_QP_SOFT_BREAK_JUNK = re.compile(rb"(?<!=)(?:==)*=\r")
_SPACES = b" " * 65536


class SizeCounter(Protocol):
    """Counts the decoded size of a part's content, fed in pieces."""

    encoded_bytes: int

    def feed(self, data: bytes) -> None: ...

    def decoded_bytes(self) -> int:
        """Decoded size of everything fed so far, as if the content ended here."""
        ...

    def has_junk(self) -> bool:
        """True when the content had bytes its encoding does not allow."""
        ...


class RawCounter:
    """7bit, 8bit, binary and unknown encodings: the content is the file."""

    def __init__(self) -> None:
        self.encoded_bytes = 0

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)

    def decoded_bytes(self) -> int:
        return self.encoded_bytes

    def has_junk(self) -> bool:
        return False


class Base64Counter:
    """Counts base64 alphabet characters; every 4 make 3 bytes, a tail of 2 or 3
    makes 1 or 2 (so padding, line breaks and junk never matter).

    '=' in the middle of the data does not stop the count, unlike binascii: a
    decoder that carries on after it must not see a bigger file than we do.
    """

    def __init__(self) -> None:
        self.encoded_bytes = 0
        self._alphabet_chars = 0
        self._junk = 0

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        # Deleting the alphabet leaves only line breaks and junk: a small copy.
        others = data.translate(None, _B64_ALPHABET)
        self._alphabet_chars += len(data) - len(others)
        if others:
            self._junk += len(others.translate(None, _B64_IGNORABLE))

    def decoded_bytes(self) -> int:
        quads, tail = divmod(self._alphabet_chars, 4)
        return quads * 3 + max(tail - 1, 0)

    def has_junk(self) -> bool:
        return self._junk > 0 or self._alphabet_chars % 4 == 1


class QuotedPrintableCounter:
    """Decodes with binascii.a2b_qp (the stdlib's own decoder) a batch of whole
    lines at a time and keeps only the length.

    An escape never reaches past a newline, so cutting right after one is safe.
    A partial line is carried to the next piece; one longer than QP_CARRY_LIMIT
    is decoded up to a cut that no escape straddles, so memory stays bounded.
    """

    def __init__(self) -> None:
        self.encoded_bytes = 0
        self._decoded = 0
        self._carry = b""
        self._skip_to_newline = False

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        if self._skip_to_newline:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._skip_to_newline = False
        if self._carry:
            data = self._carry + data
            self._carry = b""
        last_newline = data.rfind(b"\n")
        if last_newline >= 0:
            self._decoded += len(a2b_qp(memoryview(data)[: last_newline + 1]))
            data = data[last_newline + 1 :]
        if len(data) <= QP_CARRY_LIMIT:
            self._carry = data
            return
        cut = _clean_cut(data)
        head = data[:cut]
        self._decoded += len(a2b_qp(head))
        self._carry = data[cut:]
        if b"=\r" in head and _QP_SOFT_BREAK_JUNK.search(head):
            # a2b_qp dropped the rest of head; the rest of the line goes too.
            self._carry = b""
            self._skip_to_newline = True

    def decoded_bytes(self) -> int:
        return self._decoded + len(a2b_qp(self._carry))

    def has_junk(self) -> bool:
        return False


def _equals_run(data: bytes, end: int) -> int:
    """Length of the run of '=' that ends just before data[end]."""
    start = end
    while start > 0 and data[start - 1] == 0x3D and end - start < 8:
        start -= 1
    if end - start < 8:
        return end - start
    return end - len(data[:end].rstrip(b"="))


def _clean_cut(line: bytes) -> int:
    """An index near the end of a partial quoted-printable line (len >= 4) that no
    escape ("=XY", "==", "=\\n") straddles.

    In a run of '=', escapes start at even offsets from its start ("==" is one
    escape), so the last '=' of an odd run starts an escape.
    """
    cut = len(line) - 2
    run = _equals_run(line, cut)
    if run % 2:
        return cut - 1  # line[cut-1] starts an escape; what is left is whole pairs
    if run == 0 and _equals_run(line, cut - 1) % 2:
        return cut - 2  # line[cut-2] starts "=XY" that may reach past cut
    return cut


def counter_for(transfer_encoding: str) -> SizeCounter:
    """The counter for a Content-Transfer-Encoding value (already normalised)."""
    if transfer_encoding == "base64":
        return Base64Counter()
    if transfer_encoding == "quoted-printable":
        return QuotedPrintableCounter()
    return RawCounter()


def feed_spaces(counter: SizeCounter, count: int) -> None:
    """Feed `count` spaces without building them all at once."""
    while count > 0:
        piece = _SPACES[: min(count, len(_SPACES))]
        counter.feed(piece)
        count -= len(piece)
