"""Files carried inside a text body: uuencode, yEnc and BinHex 4.0.

Mail clients show these as attachments, so they are files under the cap like any
MIME part. The finder is fed a text part's decoded content in pieces of any size and
keeps at most a few KB (the line being read). Sizes are the largest any decoder can
produce from what was sent, never a declared size taken on trust:

- uuencode: per line, the larger of its length character (decoders pad short lines:
  ``M`` alone decodes to 45 bytes) and 3/4 of its characters; ``begin-base64``
  (sharutils) as base64, 3/4 of its characters;
- yEnc: every byte of a data line (escapes make it a little less), or the declared
  ``size=`` when that is larger;
- BinHex 4.0: the 6-bit stream is decoded and its run-length encoding expanded,
  which can make the file 100 times larger than the text carrying it.
"""

from __future__ import annotations

import re
from binascii import a2b_base64
from dataclasses import dataclass
from typing import Literal

EmbeddedKind = Literal["uuencode", "yenc", "binhex"]

#: Longest piece of one line kept between pieces; the rest of a longer line is
#: counted as it passes.
MAX_CARRY = 4096
MAX_FOUND = 64  # files reported per text part; more are counted in the largest only
_MARKER = re.compile(
    rb"^(?:(begin) [0-7]{1,4} ([^\r\n]*)|(begin-base64) [0-7]{1,4} ([^\r\n]*)"
    rb"|(=ybegin) ([^\r\n]*)|(\(This file must be converted with BinHex)[^\r\n]*)\r?$",
    re.MULTILINE,
)
_YENC_SIZE = re.compile(rb"\bsize=(\d{1,15})")
_YENC_NAME = re.compile(rb"\bname=(.*)$")
_BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_BASE64 = bytes.maketrans(_BINHEX_ALPHABET, _BASE64_ALPHABET)
_NOT_BINHEX = bytes(set(range(256)) - set(_BINHEX_ALPHABET))
_RLE = 0x90


@dataclass(frozen=True, slots=True)
class EmbeddedFile:
    kind: EmbeddedKind
    name: str | None
    decoded_bytes: int
    encoded_bytes: int


class _Block:
    """One embedded file being read, line by line (BinHex: as a stream)."""

    def __init__(self, kind: EmbeddedKind, name: str | None, declared: int = 0) -> None:
        self.kind = kind
        self.name = name
        self.declared = declared
        self.size = 0
        self.encoded = 0
        self.done = False
        # BinHex state
        self._started = False  # the ':' that opens the data was seen
        self._sixes = b""  # 6-bit characters not yet a multiple of 4
        self._after_rle = False  # the last decoded byte was the RLE marker
        self._head = b""  # the first decoded bytes: the file name is in them

    def line(self, line: bytes) -> None:
        """One whole line (uuencode, yEnc, begin-base64), without its line break."""
        self.encoded += len(line) + 1
        stripped = line.rstrip(b"\r \t")
        if self.kind == "uuencode":
            if stripped == b"end":
                self.done = True
            elif stripped:
                self.size += max((stripped[0] - 32) & 63, (len(stripped) - 1) * 3 // 4)
        elif stripped.startswith(b"=yend"):
            self.done = True
        elif not stripped.startswith(b"=ypart"):
            self.size += len(stripped)

    def long_line_piece(self, piece: bytes) -> None:
        """Part of a line too long to hold: counted as the largest it can decode to."""
        self.encoded += len(piece)
        self.size += len(piece) if self.kind == "yenc" else len(piece) * 3 // 4 + 1

    def stream(self, data: bytes) -> bytes:
        """BinHex: the 6-bit stream between ':' and ':', line breaks ignored.
        Returns what follows the closing ':' (the text goes on)."""
        rest = b""
        if not self._started:
            colon = data.find(b":")
            if colon < 0:
                self.encoded += len(data)
                return b""
            self._started = True
            self.encoded += colon + 1
            data = data[colon + 1 :]
        end = data.find(b":")
        if end >= 0:
            data, rest = data[:end], data[end + 1 :]
            self.done = True
        self.encoded += len(data)
        sixes = self._sixes + data.translate(None, _NOT_BINHEX)
        whole = len(sixes) - len(sixes) % 4
        self._sixes = sixes[whole:]
        if whole:
            self._expand(a2b_base64(sixes[:whole].translate(_TO_BASE64)))
        if self.done and len(self._sixes) > 1:  # a last partial group still makes bytes
            tail = self._sixes.translate(_TO_BASE64)
            self._expand(a2b_base64(tail + b"=" * (4 - len(tail))))
        return rest

    def _expand(self, decoded: bytes) -> None:
        """Count the bytes run-length decoding makes: 0x90 N repeats the previous
        byte N-1 more times (N = 0 is a literal 0x90)."""
        if len(self._head) < 64:
            self._head += decoded[: 64 - len(self._head)]
        size = len(decoded)
        start = 0
        if self._after_rle and decoded:
            size += _run(decoded[0]) - 2  # marker (last piece) and count byte make the run
            start = 1
            self._after_rle = False
        marker = decoded.find(_RLE, start)
        while marker >= 0:
            if marker + 1 >= len(decoded):
                self._after_rle = True
                break
            size += _run(decoded[marker + 1]) - 2  # the two bytes stand for the run
            marker = decoded.find(_RLE, marker + 2)
        self.size += size

    def result(self) -> EmbeddedFile:
        name = self.name
        if self.kind == "binhex" and len(self._head) > 1:
            name = self._head[1 : 1 + self._head[0]].decode("latin-1") or None
        size = max(self.size, self.declared)
        return EmbeddedFile(self.kind, name, size, self.encoded)


def _run(count: int) -> int:
    """Bytes that ``0x90 count`` stands for: the previous byte count-1 more times,
    or (count 0) one literal 0x90."""
    return count - 1 if count else 1


class EmbeddedFileFinder:
    """Fed a text part's decoded content; `finish()` lists the files found in it."""

    def __init__(self) -> None:
        self._carry = b""
        self._carry_dropped = False  # the carried line grew past MAX_CARRY
        self._block: _Block | None = None
        self._found: list[EmbeddedFile] = []
        self._largest: EmbeddedFile | None = None

    def feed(self, data: bytes) -> None:
        while data:
            block = self._block
            if block is not None and block.kind == "binhex":
                rest = block.stream(data)
                if not block.done:
                    return
                self._close_block()
                data = _line_rest(rest)  # the text goes on after the closing ':'
                continue
            data = self._carry + data if self._carry else data
            self._carry = b""
            data = self._search(data) if block is None else self._block_lines(block, data)

    def _search(self, data: bytes) -> bytes:
        """Look for the line that starts an embedded file; returns what follows it."""
        last_newline = data.rfind(b"\n")
        if self._carry_dropped:  # the rest of a line too long to be a marker line
            first = data.find(b"\n")
            if first < 0:
                return b""
            self._carry_dropped = False
            data = data[first + 1 :]
            last_newline = data.rfind(b"\n")
        found = _MARKER.search(data, 0, last_newline + 1) if last_newline >= 0 else None
        if found is None:
            self._hold(data[last_newline + 1 :])
            return b""
        if found.group(1):
            self._block = _Block("uuencode", _name(found.group(2)))
        elif found.group(3):
            self._block = _Base64Block(_name(found.group(4)))
        elif found.group(5):
            header = found.group(6)
            declared = _YENC_SIZE.search(header)
            name = _YENC_NAME.search(header)
            self._block = _Block(
                "yenc",
                _name(name.group(1)) if name else None,
                int(declared.group(1)) if declared else 0,
            )
        else:
            self._block = _Block("binhex", None)
        return data[found.end() + 1 :]

    def _block_lines(self, block: _Block, data: bytes) -> bytes:
        start = 0
        while not block.done:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            block.line(data[start:newline])
            start = newline + 1
        if block.done:
            self._close_block()
            return data[start:]
        rest = data[start:]
        if len(rest) > MAX_CARRY:
            block.long_line_piece(rest[MAX_CARRY:])
            rest = rest[:MAX_CARRY]
        self._carry = rest
        return b""

    def _hold(self, partial_line: bytes) -> None:
        if len(partial_line) > MAX_CARRY:
            self._carry_dropped = True
            return
        self._carry = partial_line

    def _close_block(self) -> None:
        assert self._block is not None
        found = self._block.result()
        self._block = None
        if self._largest is None or found.decoded_bytes > self._largest.decoded_bytes:
            self._largest = found
        if len(self._found) < MAX_FOUND:
            self._found.append(found)

    def finish(self) -> list[EmbeddedFile]:
        """The files found; one still open at the end counts as far as it got."""
        if self._block is not None:
            if self._carry and self._block.kind != "binhex":
                self._block.line(self._carry)
            self._carry = b""
            self._close_block()
        found = list(self._found)
        if self._largest is not None and self._largest not in found:
            found.append(self._largest)
        return found


class _Base64Block(_Block):
    """``begin-base64`` (GNU sharutils uuencode -m): base64 lines up to ``====``."""

    def __init__(self, name: str | None) -> None:
        super().__init__("uuencode", name)

    def line(self, line: bytes) -> None:
        self.encoded += len(line) + 1
        stripped = line.rstrip(b"\r \t")
        if stripped == b"====":
            self.done = True
        else:
            self.size += len(stripped) * 3 // 4

    def long_line_piece(self, piece: bytes) -> None:
        self.encoded += len(piece)
        self.size += len(piece) * 3 // 4 + 1


def _line_rest(rest: bytes) -> bytes:
    """After a BinHex block: the rest of its closing line is no line start."""
    newline = rest.find(b"\n")
    return b"" if newline < 0 else rest[newline + 1 :]


def _name(raw: bytes) -> str | None:
    name = raw.strip().decode("utf-8", "replace")
    return name or None
