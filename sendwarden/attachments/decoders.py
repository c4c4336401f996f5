"""Size counters for the content of one MIME leaf part, one per transfer encoding.

A counter is fed the part's encoded content in pieces of any size and split point
and knows the decoded size at the end. None of them keeps the content: base64 is
counted from the number of alphabet characters, quoted-printable is decoded a line
batch at a time and thrown away, anything else is counted as it is.
"""

from __future__ import annotations

import re
from binascii import a2b_base64, a2b_qp
from collections.abc import Callable
from typing import Protocol

#: Where a counter hands the decoded content when someone needs to read it (the
#: finder of files inside text parts); counters without one decode nothing extra.
Sink = Callable[[bytes], None]

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_IGNORABLE = b" \t\r\n="
_B64_NOT_ALPHABET = bytes(set(range(256)) - set(_B64_ALPHABET))
#: Partial quoted-printable lines longer than this are decoded in pieces, not held.
QP_CARRY_LIMIT = 4096
#: An escape that starts a soft line break with junk after it ("=\r..."): a2b_qp
#: drops everything up to the next newline. Odd run of '=' = the last one escapes.
_QP_SOFT_BREAK_JUNK = re.compile(rb"(?<!=)(?:==)*=\r")
_SPACES = b" " * 65536
_QP_LITERAL_PAIR = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n)[^\n]")
_LONG_QP_LINE = re.compile(rb"(?m)^[^\n]{%d,}\n" % (QP_CARRY_LIMIT + 1))  # at line starts: linear


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

    def flush(self) -> None:
        """End of the part: hand what is still held to the sink (if any)."""
        ...

    def ended_by_delimiter(self, line_break: bytes) -> None:
        """The part ended at a delimiter after `line_break`, which the stdlib gives to
        the delimiter and some decoders keep in the part."""
        ...


class RawCounter:
    """7bit, 8bit, binary and unknown encodings: the content is the file."""

    def __init__(self, sink: Sink | None = None) -> None:
        self.encoded_bytes = 0
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        if self._sink is not None:
            self._sink(data)

    def decoded_bytes(self) -> int:
        return self.encoded_bytes

    def has_junk(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def ended_by_delimiter(self, line_break: bytes) -> None:
        pass


class Base64Counter:
    """Counts base64 alphabet characters; every 4 make 3 bytes, a tail of 2 or 3
    makes 1 or 2 (so padding, line breaks and junk never matter).

    '=' in the middle of the data does not stop the count, unlike binascii: a
    decoder that carries on after it must not see a bigger file than we do.
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self.encoded_bytes = 0
        self._alphabet_chars = 0
        self._line_breaks = 0
        self._junk = 0
        self._sink = sink
        self._quads = b""  # alphabet characters not yet a whole group of 4 (with a sink)

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        self._line_breaks += data.count(b"\n") + data.count(b"\r")
        # Deleting the alphabet leaves only line breaks and junk: a small copy.
        others = data.translate(None, _B64_ALPHABET)
        self._alphabet_chars += len(data) - len(others)
        if others:
            self._junk += len(others.translate(None, _B64_IGNORABLE))
        if self._sink is not None:
            self._decode_for_sink(data)

    def _decode_for_sink(self, data: bytes) -> None:
        alphabet = self._quads + data.translate(None, _B64_NOT_ALPHABET)
        whole = len(alphabet) - len(alphabet) % 4
        self._quads = alphabet[whole:]
        if whole:
            assert self._sink is not None
            self._sink(a2b_base64(alphabet[:whole]))

    def decoded_bytes(self) -> int:
        quads, tail = divmod(self._alphabet_chars, 4)
        decoded = quads * 3 + max(tail - 1, 0)
        if tail == 1:
            # No padding can decode this; the stdlib (email's decode_b, bpo-27397) then
            # hands over the encoded text itself, line breaks removed: a bigger file.
            return max(decoded, self.encoded_bytes - self._line_breaks)
        return decoded

    def has_junk(self) -> bool:
        return self._junk > 0 or self._alphabet_chars % 4 == 1

    def flush(self) -> None:
        if self._sink is not None and len(self._quads) > 1:
            self._sink(a2b_base64(self._quads + b"=" * (4 - len(self._quads))))
        self._quads = b""

    def ended_by_delimiter(self, line_break: bytes) -> None:
        pass  # a line break is no base64 data


class QuotedPrintableCounter:
    """Counts two readings of quoted-printable and reports the larger:

    - binascii.a2b_qp (the stdlib's own decoder; "==" is one escape, junk after a
      soft line break is dropped), decoded a batch of whole lines at a time;
    - a lenient decoder (as in Rust mail libraries): only "=XY" with hex digits
      and "=" at the end of a line are escapes; "=" and the character after it
      are otherwise both literal ("==41" stays as it is).

    In both a hard line break is CRLF in canonical form, so a bare LF counts two.
    An escape never reaches past a newline, so cutting right after one is safe.
    A partial line is carried to the next piece; one longer than QP_CARRY_LIMIT
    is decoded up to a cut that no escape straddles, so memory stays bounded (the
    lenient reading counts such a long line raw, whatever the pieces).
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self.encoded_bytes = 0
        self._decoded = 0
        self._lenient = 0
        self._carry = b""
        self._skip_to_newline = False
        self._in_long_line = False  # a line over QP_CARRY_LIMIT is being cut
        self._soft_end = False  # the last whole line ends in a soft break, read as Rust's
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        if self._skip_to_newline:
            newline = data.find(b"\n")
            if newline < 0:
                self._lenient += len(data)
                return
            self._lenient += newline + 2  # the rest of the long line, raw; LF as CRLF
            self._in_long_line = False
            data = data[newline + 1 :]
            self._skip_to_newline = False
        if self._carry:
            data = self._carry + data
            self._carry = b""
        last_newline = data.rfind(b"\n")
        if last_newline >= 0:
            self._count(a2b_qp(memoryview(data)[: last_newline + 1]))
            self._lenient += self._lenient_lines(data[: last_newline + 1])
            data = data[last_newline + 1 :]
        if len(data) <= QP_CARRY_LIMIT:
            self._carry = data
            return
        cut = _clean_cut(data)
        head = data[:cut]
        self._count(a2b_qp(head))
        self._lenient += len(head)
        self._in_long_line = True
        self._carry = data[cut:]
        if b"=\r" in head and _QP_SOFT_BREAK_JUNK.search(head):
            # a2b_qp dropped the rest of head; the rest of the line goes too.
            self._lenient += len(self._carry)
            self._carry = b""
            self._skip_to_newline = True

    def ended_by_delimiter(self, line_break: bytes) -> None:
        """The part ended at a delimiter: lenient parsers keep the line break before
        it in the part (as CRLF), where the stdlib gives it to the delimiter."""
        if line_break:
            self._lenient += 2

    def _lenient_lines(self, lines: bytes) -> int:
        """The lenient reading of whole lines; lines over QP_CARRY_LIMIT count raw."""
        total = 0
        pos = 0
        if self._in_long_line:  # the end of a line that was cut
            pos = lines.find(b"\n") + 1
            total += pos + 1
            self._in_long_line = False
        self._soft_end = _ends_in_soft_break(lines)
        for long_line in _LONG_QP_LINE.finditer(lines, pos) if _may_hold_long_lines(lines) else ():
            total += _lenient_size(lines[pos : long_line.start()])
            total += long_line.end() - long_line.start() + 1  # raw; its LF counts as CRLF
            pos = long_line.end()
        return total + _lenient_size(lines[pos:])

    def _count(self, decoded: bytes) -> None:
        self._decoded += _canonical_size(decoded)
        if self._sink is not None:
            self._sink(decoded)

    def decoded_bytes(self) -> int:
        carry = self._carry
        lenient = len(carry) if self._in_long_line else _lenient_size(carry)
        # The crate ends a part whose last line is a soft break with a line break anyway.
        lenient += 2 if self._soft_end and not carry else 0
        return max(self._decoded + _canonical_size(a2b_qp(carry)), self._lenient + lenient)

    def flush(self) -> None:
        """End of the part: the held partial line goes to the sink too."""
        if self._sink is not None and self._carry:
            self._sink(a2b_qp(self._carry))

    def has_junk(self) -> bool:
        return False


def _may_hold_long_lines(lines: bytes) -> bool:
    """Cheap pre-check: a line over QP_CARRY_LIMIT holds a newline-free aligned
    window of half that size (finding none, the exact search is skipped)."""
    step = QP_CARRY_LIMIT // 2
    return any(lines.find(b"\n", start, start + step) < 0 for start in range(0, len(lines), step))


def _lenient_size(data: bytes) -> int:
    """Size of whole quoted-printable lines under the lenient readings: the larger of
    one escape at a time and Rust's (which differ on "=" followed by junk)."""
    if b"=" not in data:
        return _canonical_size(data)  # (Rust's reading only drops bytes then)
    one_escape = _one_escape_size(data)
    if not _QP_RUST_DIVERGES.search(data) and not _QP_UNPRINTABLE.search(data):
        return one_escape  # each token reads alike, or Rust's is smaller
    return max(one_escape, _rust_size(data))


#: What the quoted_printable crate (robust mode, under fast_mail_parser) drops before
#: decoding: every byte but tab, CR, LF and printable ASCII; then blanks at line ends.
_QP_UNPRINTABLE = re.compile(rb"[^\t\r\n\x20-\x7e]+")
_QP_TRAILING_BLANKS = re.compile(rb"[ \t\r]+(?=\n|\Z)")
#: Its tokens: "=XY" with hex digits (one byte); "=" and the two characters after it,
#: kept as they are ("=2=80" stays whole); "=" at a line's end (a soft line break).
_QP_RUST_TOKEN = re.compile(rb"(=[0-9A-Fa-f]{2})|(=[^\n]{1,2})|(=)")
#: Where the two lenient readings can part: "=" and a character that start no escape,
#: then a "=" that Rust keeps as the third character of "=XY" and the other reads as
#: the start of an escape. Without one (and with no byte Rust drops, which could bring
#: two "=" together), Rust's reading is never the larger.
_QP_RUST_DIVERGES = re.compile(rb"=(?![0-9A-Fa-f]{2})[^\n]=")


def _rust_size(data: bytes) -> int:
    """Size of quoted-printable text as the quoted_printable crate decodes it."""
    if _QP_UNPRINTABLE.search(data):
        data = _QP_UNPRINTABLE.sub(b"", data)
    if _QP_TRAILING_BLANKS.search(data):
        data = _QP_TRAILING_BLANKS.sub(b"", data)
    escapes, soft = _rust_tokens(data)
    # A soft line break is no text: its "=" and its line break go (at the end of the
    # data, before any line break, only its "=").
    _, ends_soft = _rust_tokens(data[data.rfind(b"\n") + 1 :])
    return len(data) + data.count(b"\n") - 2 * escapes - 3 * soft + 2 * ends_soft


def _rust_tokens(data: bytes) -> tuple[int, int]:
    """How many hex escapes and soft line breaks the crate reads in ``data`` (one token
    at a time: nothing is kept per token, so memory stays bounded)."""
    escapes = soft = 0
    for token in _QP_RUST_TOKEN.finditer(data):
        if token.lastindex == 1:
            escapes += 1
        elif token.lastindex == 3:
            soft += 1
    return escapes, soft


def _ends_in_soft_break(lines: bytes) -> bool:
    """Whether the last of these whole lines ends in a soft line break, as the
    quoted_printable crate reads it."""
    last = lines[lines.rfind(b"\n", 0, len(lines) - 1) + 1 : -1]
    if b"=" not in last:
        return False
    last = _QP_TRAILING_BLANKS.sub(b"", _QP_UNPRINTABLE.sub(b"", last))
    return _rust_tokens(last)[1] == 1


def _one_escape_size(data: bytes) -> int:
    """Size of whole lines where "=" and a character that starts no escape are both
    literal, and the next character is read afresh ("==41" stays as is)."""
    if b"=" not in data:
        return _canonical_size(data)
    # "=" and a character that starts no escape are both literal ("==41" stays as is).
    data = _QP_LITERAL_PAIR.sub(b"..", data)
    # What is left of "=" starts an escape, a soft line break, or ends the data.
    soft_crlf, soft_lf = data.count(b"=\r\n"), data.count(b"=\n")
    escapes = data.count(b"=") - soft_crlf - soft_lf - data.endswith(b"=")
    # A soft break is no text; "=\n" also has no CRLF to count its LF as.
    return _canonical_size(data) - 2 * escapes - 3 * soft_crlf - 3 * soft_lf


def _canonical_size(decoded: bytes) -> int:
    """A hard line break of quoted-printable is CRLF in canonical form (RFC 2045
    6.7), and decoders that follow it turn a bare LF into CRLF: count it as two."""
    newlines = decoded.count(b"\n")
    return len(decoded) + newlines - decoded.count(b"\r\n") if newlines else len(decoded)


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


class LargestReadingCounter:
    """Content whose transfer encoding reads more than one way (headers that disagree,
    a value that is no bare token): every reading is counted, the largest reported."""

    def __init__(self, sink: Sink | None = None) -> None:
        self.encoded_bytes = 0
        self._readings: tuple[SizeCounter, ...] = (
            RawCounter(sink),
            QuotedPrintableCounter(),
            Base64Counter(),
        )

    def feed(self, data: bytes) -> None:
        self.encoded_bytes += len(data)
        for reading in self._readings:
            reading.feed(data)

    def decoded_bytes(self) -> int:
        return max(reading.decoded_bytes() for reading in self._readings)

    def has_junk(self) -> bool:
        return False

    def flush(self) -> None:
        for reading in self._readings:
            reading.flush()

    def ended_by_delimiter(self, line_break: bytes) -> None:
        for reading in self._readings:
            reading.ended_by_delimiter(line_break)


#: Transfer encodings that read more than one way (see the headers module).
AMBIGUOUS_ENCODINGS = frozenset({"conflicting", "unknown"})


def counter_for(transfer_encoding: str, sink: Sink | None = None) -> SizeCounter:
    """The counter for a Content-Transfer-Encoding value (already normalised); with
    a sink, the decoded content is handed to it as well."""
    if transfer_encoding in AMBIGUOUS_ENCODINGS:
        return LargestReadingCounter(sink)
    if transfer_encoding == "base64":
        return Base64Counter(sink)
    if transfer_encoding == "quoted-printable":
        return QuotedPrintableCounter(sink)
    return RawCounter(sink)


def feed_spaces(counter: SizeCounter, count: int) -> None:
    """Feed `count` spaces without building them all at once."""
    while count > 0:
        piece = _SPACES[: min(count, len(_SPACES))]
        counter.feed(piece)
        count -= len(piece)
