"""A streaming MIME scanner that measures the decoded size of every leaf part.

It is fed what a milter gets (header fields, then body chunks of any size) and
never holds the message: content is counted chunk by chunk as it passes (a
regular expression finds the delimiter lines of the open multiparts), and the
only thing kept between chunks is the line being read when it may be a delimiter
or is a header line, never more than MAX_LINE bytes of it. Containers
(multiparts, attached messages) sit on a stack of at most `max_depth`.

The rules follow RFC 2046 and, where it is silent, the stdlib's email parser: a
delimiter is "--boundary" (or "--boundary--") with only spaces or tabs after it
(one that goes on is refused, see below), any enclosing multipart's delimiter
ends the parts inside it, and the line break before a delimiter belongs to the
delimiter, not to the content.

One reading, or a refusal. Where RFC 2045/2046/2231/5322 or common practice let a
message be read more than one way, the scanner either counts the largest reading
or reports the message as ambiguous (`ScanReport.ambiguities`: refused with
554 5.6.0 and the reason). Case by case:

- Two boundaries for one multipart (``boundary`` twice with different values,
  plain ``boundary`` next to RFC 2231 ``boundary*`` / ``boundary*0``, or any
  ``boundary*`` form at all, which many parsers ignore): ambiguous. The stdlib
  alone takes the first under compat32 and ``boundary*`` under its default policy.
- A quoted boundary with backslashes, an empty one or one ending in blanks:
  ambiguous (parsers unquote and trim differently).
- A Content-Type that is not plain ``type/subtype; name=value; ...`` (comments,
  unbalanced quotes, blanks inside the type, a missing ``;``, ``=`` or other
  specials in an unquoted value) and mentions multipart or message: ambiguous,
  since parsers disagree on whether it is a container and on its boundary. Such
  oddities on any other type change nothing about sizes: one reading.
- Two different Content-Type headers on one entity: ambiguous (the stdlib takes
  the first, others the last). Identical copies: one reading.
- Two different Content-Transfer-Encoding headers, or one that is not a bare
  token (``base64 (comment)``, ``base64 x``): on a leaf, every reading is counted
  (raw, base64, quoted-printable) and the largest kept; on a container, ambiguous.
- A transfer encoding other than 7bit/8bit/binary on a multipart or an attached
  message: ambiguous (the stdlib ignores it, other parsers decode first and then
  split). Still parsed as a container, so sizes stay reported.
- Header-name variants: any letter case is one reading (every parser folds case).
  A Content-* header with blanks before its colon is a header to some parsers and
  the first body line to others (the stdlib): ambiguous, at the top level (the
  MTA's header fields) and in parts.
- Duplicate Content-Disposition (file names only), base64 junk and missing or
  extra padding (alphabet characters are counted, the most any decoder keeps),
  missing or unclosed boundaries and text outside the parts (counted, see below):
  one conservative reading, noted in `ScanReport.defects`.
- ``message/partial``: counted as one raw part and listed in `ScanReport.fragments`;
  the rule refuses it, or caps the fragments of one id across messages.
- Any other ``message/*`` subtype but ``rfc822`` (``global``, ``delivery-status``,
  an unknown or misspelt one): one part counted whole. RFC 2046 reads an
  unrecognised subtype as application/octet-stream and so do some mail programs;
  the stdlib reads a message inside; the whole is at least what either decodes.
- A line that starts with an open multipart's delimiter and goes on: ambiguous
  (a delimiter to RFC 2046's prefix comparison and to some parsers, content to the
  stdlib).
- Files inside text parts (uuencode, yEnc, BinHex 4.0, after the part's own
  transfer decoding): counted as files of their own (role "embedded"); see
  `sendwarden.attachments.embedded`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sendwarden.attachments.decoders import (
    RawCounter,
    SizeCounter,
    counter_for,
    feed_spaces,
)
from sendwarden.attachments.embedded import EmbeddedFileFinder
from sendwarden.attachments.headers import (
    EntityHeaders,
    HeaderBlock,
    LineKind,
    to_bytes,
)
from sendwarden.attachments.report import Defect, Fragment, PartRole, PartSize, ScanReport

#: Most bytes of one line held while deciding whether it is a delimiter or while
#: parsing it as a header. Longer content lines are never held at all.
MAX_LINE = 8192
DEFAULT_MAX_DEPTH = 20
MAX_REPORTED = 16  # ambiguities and fragments kept in a report
_CR = 0x0D
_DASH = 0x2D
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
#: How a file found inside a text part is named in the report.
EMBEDDED_TYPES = {
    "uuencode": "application/x-uuencode",
    "yenc": "application/x-yenc",
    "binhex": "application/mac-binhex40",
}
#: The message/* types read as a message inside the message. Every other subtype
#: (message/partial, delivery-status, global, an unknown or misspelt one) is counted
#: as one part: RFC 2046 treats an unrecognised message subtype as
#: application/octet-stream and some mail programs do, while the stdlib reads a
#: message inside; its whole size is at least any file either reading decodes.
_ENCAPSULATING_MESSAGES = frozenset({"rfc822"})
#: Whole header lines the scan does not need (not Content-*, not a possible
#: delimiter, not over MAX_LINE, no carriage return but the one before LF) and
#: continuation lines of such headers are skipped in one step, not line by line.
_CONTINUATION = rb"(?:(?=[^\n]{0,%d}\n)[ \t][^\r\n]*\r?\n)" % MAX_LINE
_OTHER_HEADER = (
    rb"(?:(?!(?i:content-)|--|From )(?=[^\n]{0,%d}\n)"
    rb"[\x21-\x39\x3b-\x7e]*:[^\r\n]*\r?\n)" % (MAX_LINE)
)
_OTHER_HEADER_LINES = re.compile(rb"%s(?:%s|%s)*" % (_OTHER_HEADER, _CONTINUATION, _OTHER_HEADER))
_UNWANTED_HEADER_LINES = re.compile(rb"(?:%s|%s)+" % (_CONTINUATION, _OTHER_HEADER))


@dataclass(slots=True)
class _Container:
    """An open multipart (with its delimiter) or attached message on the stack."""

    content_type: str
    depth: int
    delimiter: bytes | None  # b"--" + boundary; None for an attached message
    closed: bool = False  # the close delimiter was seen


@dataclass(slots=True)
class _OpenContent:
    """The content being counted: a leaf part's body, a preamble or an epilogue."""

    counter: SizeCounter
    entity: EntityHeaders
    depth: int
    role: PartRole
    owner: _Container | None = None  # the multipart a preamble belongs to
    finder: EmbeddedFileFinder | None = None  # files inside a text part


class AttachmentScanner:
    """Feed it a message as a milter gets it; `finish()` says how big each part was.

    >>> scanner = AttachmentScanner()
    >>> scanner.add_header("Content-Type", "text/plain")
    >>> scanner.feed(b"hello\\r\\n")
    >>> scanner.finish().largest.decoded_bytes
    7

    Malformed input never raises; it is counted conservatively and noted in
    `ScanReport.defects`. With `headers_in_body=True` the header section is read
    from the fed bytes too (a whole RFC 5322 message, as `scan_message` does).
    """

    def __init__(
        self,
        max_depth: int = DEFAULT_MAX_DEPTH,
        keep_parts: int = 0,
        headers_in_body: bool = False,
    ) -> None:
        self._max_depth = max_depth
        self._keep_parts = keep_parts
        self._stack: list[_Container] = []
        self._delimiter_lines: re.Pattern[bytes] | None = None  # of the open multiparts
        self._headers: HeaderBlock | None = HeaderBlock()
        self._header_depth = 0
        self._fresh_part = False  # the header block opened right after a delimiter
        self._content: _OpenContent | None = None
        self._buf = b""
        self._at_line_start = True
        self._pending_eol = b""  # held until we know no delimiter follows
        self._elided_spaces = 0  # padding dropped from a long would-be delimiter line
        self._elided_at = 0
        self._started = headers_in_body
        self._report: ScanReport | None = None
        self._body_bytes = 0
        self._parts_seen = 0
        self._largest: PartSize | None = None
        self._kept: list[PartSize] = []
        self._defects: dict[Defect, None] = {}
        self._ambiguities: dict[str, None] = {}
        self._fragments: list[Fragment] = []
        self._depth_exceeded = False

    # -- public API ----------------------------------------------------------

    def add_header(self, name: str, value: str | bytes) -> None:
        """A top-level header field (unfolded value), in the order received."""
        if self._started or self._headers is None:
            raise RuntimeError("add_header() after the body started")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        self._headers.add_field(name, value)

    def feed(self, chunk: bytes) -> None:
        """The next piece of the body, split anywhere."""
        if self._report is not None:
            raise RuntimeError("feed() after finish()")
        self._start_body()
        self._body_bytes += len(chunk)
        self._process(bytes(chunk), eof=False)

    def finish(self) -> ScanReport:
        """End of message: count what is left and report. Safe to call twice."""
        if self._report is None:
            self._start_body()
            self._process(b"", eof=True)
            if self._content is not None and self._pending_eol:
                self._content.counter.feed(self._pending_eol)  # no delimiter owns it
            self._pending_eol = b""
            self._end_current(None, close=False)
            for container in self._stack:
                if container.delimiter is not None and not container.closed:
                    self._note(Defect.UNCLOSED_MULTIPART)
            self._report = ScanReport(
                largest=self._largest,
                parts_seen=self._parts_seen,
                depth_exceeded=self._depth_exceeded,
                defects=tuple(self._defects),
                ambiguities=tuple(self._ambiguities),
                fragments=tuple(self._fragments),
                body_bytes=self._body_bytes,
                parts=tuple(self._kept),
            )
        return self._report

    # -- the line machine ----------------------------------------------------

    def _start_body(self) -> None:
        if not self._started:
            self._started = True
            self._end_headers()

    def _process(self, data: bytes, eof: bool) -> None:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while pos < end:
            if self._at_line_start:
                if end - pos < 2 and not eof:
                    break  # cannot tell yet whether the line starts with "--"
                if buf[pos] == _DASH and pos + 1 < end and buf[pos + 1] == _DASH:
                    newline = buf.find(b"\n", pos)
                    if newline >= 0 or eof:
                        line_end = end if newline < 0 else newline
                        hit = self._match_delimiter(buf[pos:line_end])
                        if hit is not None:
                            pos = min(line_end + 1, end)
                            self._on_delimiter(*hit)
                            continue
                    elif end - pos < MAX_LINE:
                        break  # wait for the whole line
                    else:
                        shrunk = self._elide_padding(buf[pos:])
                        if shrunk is not None:
                            buf, pos, end = shrunk, 0, len(shrunk)
                            break
                if self._headers is not None:
                    skippable = (
                        _OTHER_HEADER_LINES
                        if self._headers.wants_continuation
                        else _UNWANTED_HEADER_LINES
                    )
                    skipped = skippable.match(buf, pos)
                    if skipped is not None:
                        self._headers.skipped_lines()
                        pos = skipped.end()
                        continue
                    next_pos = self._header_line(buf, pos, end, eof)
                    if next_pos < 0:
                        break
                    pos = next_pos
                    continue
                pos = self._start_content_line(buf, pos)
            elif self._headers is not None:  # the rest of a truncated header line
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    pos = end
                    break
                pos = newline + 1
                self._at_line_start = True
            else:
                pos = self._count_content(buf, pos, end, eof)
                if not self._at_line_start:
                    break  # what is left is a CR that may start a line break
        self._buf = buf[pos:]

    def _count_content(self, buf: bytes, pos: int, end: int, eof: bool) -> int:
        """Count content from the middle of a line up to the next delimiter line
        of an open multipart (or else the last line start); its line break is
        held. Lines that only look like delimiters are counted in the same step."""
        assert self._content is not None
        counter = self._content.counter
        newline = -1
        if self._delimiter_lines is not None:
            dash = buf.find(b"-", pos)  # memchr: base64 has no "-", so this is quick
            if dash >= 0:
                found = self._delimiter_lines.search(buf, max(dash - 1, pos))
                if found is not None:
                    newline = found.start()
        if newline < 0:
            newline = buf.rfind(b"\n", pos)
        if newline >= 0:
            eol = newline - 1 if newline > pos and buf[newline - 1] == _CR else newline
            if eol > pos:
                counter.feed(buf[pos:eol])
            self._pending_eol = buf[eol : newline + 1]
            self._at_line_start = True
            return newline + 1
        stop = end - 1 if not eof and buf[end - 1] == _CR else end
        if stop > pos:
            counter.feed(buf[pos:stop])
        return stop

    def _start_content_line(self, buf: bytes, pos: int) -> int:
        """A content line that is no delimiter: the held line break was content."""
        assert self._content is not None
        counter = self._content.counter
        if self._pending_eol:
            counter.feed(self._pending_eol)
            self._pending_eol = b""
        if self._elided_spaces:
            counter.feed(buf[pos : pos + self._elided_at])
            feed_spaces(counter, self._elided_spaces)
            pos += self._elided_at
            self._elided_spaces = 0
        self._at_line_start = False
        return pos

    def _header_line(self, buf: bytes, pos: int, end: int, eof: bool) -> int:
        """Parse one header line; -1 when it is not complete yet."""
        assert self._headers is not None
        newline = buf.find(b"\n", pos)
        line_end = newline + 1 if newline >= 0 else end
        if newline < 0 and not eof and end - pos <= MAX_LINE:
            return -1
        stop = end if newline < 0 else newline
        line = buf[pos : min(stop, pos + MAX_LINE + 1)]
        if self._elided_spaces:  # put back (some of) the padding taken out of it
            at = self._elided_at
            line = line[:at] + b" " * min(self._elided_spaces, MAX_LINE) + line[at:]
        # Only the first MAX_LINE bytes are read, however the line arrived.
        truncated = len(line) > MAX_LINE
        kind = self._headers.add_line(line[:MAX_LINE])
        if kind is LineKind.NOT_HEADER:
            self._end_headers()  # the body starts with this very line
            return pos
        self._elided_spaces = 0
        if kind is LineKind.END:
            self._end_headers()
        elif truncated:
            self._note(Defect.LONG_HEADER)
            self._at_line_start = newline >= 0  # else drop the rest of the line as it comes
        return line_end

    # -- delimiters ----------------------------------------------------------

    def _match_delimiter(self, line: bytes) -> tuple[int, bool] | None:
        """(stack level, is close delimiter) of the innermost open multipart whose
        delimiter this line is, or None."""
        if line.endswith(b"\r"):
            line = line[:-1]
        line = line.rstrip(b" \t")
        for level in range(len(self._stack) - 1, -1, -1):
            container = self._stack[level]
            delimiter = container.delimiter
            if delimiter is None or container.closed or not line.startswith(delimiter):
                continue
            rest = len(line) - len(delimiter)
            if rest == 0:
                return level, False
            if rest == 2 and line.endswith(b"--"):
                return level, True
            # RFC 2046 compares a boundary with the start of a line, and mail
            # programs that do split here; the stdlib and this scanner don't.
            self._ambiguous("a line that starts with a boundary delimiter and goes on")
        return None

    def _elide_padding(self, line_start: bytes) -> bytes | None:
        """A line over MAX_LINE that is still a delimiter followed by nothing but
        spaces and tabs: drop the padding (remembering how much, in case the line
        turns out to be content) so the buffer stays bounded."""
        core = line_start[:-1] if line_start.endswith(b"\r") else line_start
        head = core.rstrip(b" \t")
        if len(head) == len(core) or head.endswith(b"\r") or self._match_delimiter(head) is None:
            return None
        if not self._elided_spaces:
            self._elided_at = len(head)
        self._elided_spaces += len(core) - len(head)
        return head + line_start[len(core) :]

    def _delimiters_changed(self) -> None:
        """Recompile the search for a line that starts with the delimiter of any open
        multipart (a whole delimiter, or one that goes on: ambiguous)."""
        open_delimiters = [
            re.escape(container.delimiter)
            for container in self._stack
            if container.delimiter is not None and not container.closed
        ]
        self._delimiter_lines = (
            re.compile(rb"\n(?:" + b"|".join(open_delimiters) + rb")") if open_delimiters else None
        )

    def _on_delimiter(self, level: int, close: bool) -> None:
        eol, self._pending_eol = self._pending_eol, b""
        self._elided_spaces = 0
        self._at_line_start = True
        container = self._stack[level]
        self._end_current(container, close, eol)
        if close or len(self._stack) > level + 1:
            while len(self._stack) > level + 1:
                inner = self._stack.pop()
                if inner.delimiter is not None and not inner.closed:
                    self._note(Defect.UNCLOSED_MULTIPART)
            container.closed = close
            self._delimiters_changed()
        if close:
            epilogue = EntityHeaders(container.content_type, "7bit", None, None)
            self._content = _OpenContent(RawCounter(), epilogue, container.depth, "epilogue")
        else:
            digest = container.content_type == "multipart/digest"
            self._begin_headers(
                container.depth + 1, "message/rfc822" if digest else "text/plain", fresh=True
            )

    # -- entities ------------------------------------------------------------

    def _begin_headers(self, depth: int, default_type: str, fresh: bool) -> None:
        self._headers = HeaderBlock(default_type)
        self._header_depth = depth
        self._fresh_part = fresh

    def _end_headers(self) -> None:
        """The header block is complete: open the entity's body."""
        assert self._headers is not None
        block, self._headers = self._headers, None
        for defect in block.defects:
            self._note(defect)
        entity = block.parse()
        if entity.ambiguity is not None:
            self._ambiguous(entity.ambiguity)
        depth = self._header_depth
        container_ok = entity.transfer_encoding in _IDENTITY_ENCODINGS
        if not container_ok and entity.maintype in ("multipart", "message"):
            self._ambiguous(
                f"a Content-Transfer-Encoding ({entity.transfer_encoding}) on a "
                f"{entity.content_type} part, which mail programs decode or ignore"
            )
        if entity.maintype == "multipart":
            if entity.boundary is None:
                self._note(Defect.MULTIPART_WITHOUT_BOUNDARY)
            elif self._room_for_container():
                if not container_ok:
                    self._note(Defect.ENCODED_CONTAINER)  # parsed as a multipart anyway
                multipart = _Container(
                    entity.content_type, depth, b"--" + to_bytes(entity.boundary)
                )
                self._stack.append(multipart)
                self._delimiters_changed()
                self._content = _OpenContent(RawCounter(), entity, depth, "preamble", multipart)
                return
        elif entity.maintype == "message" and entity.subtype in _ENCAPSULATING_MESSAGES:
            if not container_ok:
                self._note(Defect.ENCODED_CONTAINER)  # counted as one encoded part
            elif self._room_for_container():
                self._stack.append(_Container(entity.content_type, depth, None))
                self._begin_headers(depth + 1, "text/plain", fresh=False)
                return
        finder = EmbeddedFileFinder() if entity.maintype == "text" else None
        counter = counter_for(entity.transfer_encoding, finder.feed if finder else None)
        self._content = _OpenContent(counter, entity, depth, "part", finder=finder)

    def _room_for_container(self) -> bool:
        if len(self._stack) < self._max_depth:
            return True
        self._depth_exceeded = True  # the container is counted as one raw part
        self._note(Defect.DEPTH_EXCEEDED)
        return False

    def _end_current(self, delimited: _Container | None, close: bool, eol: bytes = b"") -> None:
        """Report the entity that a delimiter (of `delimited`) or the end ended;
        `eol` is the line break before that delimiter."""
        if self._headers is not None:
            block, self._headers = self._headers, None
            if block.lines_seen or not self._fresh_part:  # "--b" twice: no part
                entity = block.parse()
                if entity.ambiguity is not None:
                    self._ambiguous(entity.ambiguity)
                self._record(
                    PartSize(
                        entity.filename,
                        entity.content_type,
                        0,
                        0,
                        entity.transfer_encoding,
                        self._header_depth,
                    )
                )
            return
        content, self._content = self._content, None
        if content is None:
            return
        role = content.role
        if role == "preamble" and (content.owner is not delimited or close):
            role = "part"  # no start delimiter: the multipart's body is all one part
            self._note(Defect.MISSING_START_BOUNDARY)
            content.counter.feed(eol)  # the stdlib keeps it in that part: count it
        elif role == "part" and content.entity.maintype == "multipart":
            content.counter.feed(eol)  # a multipart read as one part (no boundary): likewise
        counter = content.counter
        counter.ended_by_delimiter(eol)
        if role != "part" and counter.encoded_bytes == 0:
            return
        if counter.has_junk():
            self._note(Defect.BASE64_JUNK)
        entity = content.entity
        self._record(
            PartSize(
                filename=entity.filename,
                content_type=entity.content_type,
                decoded_bytes=counter.decoded_bytes(),
                encoded_bytes=counter.encoded_bytes,
                transfer_encoding=entity.transfer_encoding,
                depth=content.depth,
                role=role,
            )
        )
        if entity.fragment is not None and len(self._fragments) < MAX_REPORTED:
            fragment = entity.fragment
            self._fragments.append(
                Fragment(
                    fragment.message_id, fragment.number, fragment.total, counter.encoded_bytes
                )
            )
        if content.finder is not None:
            counter.flush()
            for found in content.finder.finish():
                self._record(
                    PartSize(
                        filename=found.name,
                        content_type=EMBEDDED_TYPES[found.kind],
                        decoded_bytes=found.decoded_bytes,
                        encoded_bytes=found.encoded_bytes,
                        transfer_encoding=found.kind,
                        depth=content.depth,
                        role="embedded",
                    )
                )

    def _record(self, part: PartSize) -> None:
        if part.role == "part":
            self._parts_seen += 1
        if self._largest is None or part.decoded_bytes > self._largest.decoded_bytes:
            self._largest = part
        if len(self._kept) < self._keep_parts:
            self._kept.append(part)

    def _note(self, defect: Defect) -> None:
        self._defects.setdefault(defect, None)

    def _ambiguous(self, reason: str) -> None:
        if len(self._ambiguities) < MAX_REPORTED:
            self._ambiguities.setdefault(reason, None)


def scan_message(
    raw: bytes,
    chunk_size: int = 65536,
    max_depth: int = DEFAULT_MAX_DEPTH,
    keep_parts: int = 0,
) -> ScanReport:
    """Scan a whole RFC 5322 message (header section and body) in chunks."""
    scanner = AttachmentScanner(max_depth=max_depth, keep_parts=keep_parts, headers_in_body=True)
    view = memoryview(raw)
    for start in range(0, len(raw), max(chunk_size, 1)):
        scanner.feed(view[start : start + chunk_size].tobytes())
    return scanner.finish()
