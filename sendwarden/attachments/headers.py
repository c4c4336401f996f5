"""The few MIME headers a size scan needs, collected with bounded memory and
parsed with linear-time code (hostile headers must not cost quadratic time)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from enum import Enum
from urllib.parse import unquote_to_bytes

from sendwarden.attachments.report import Defect

#: Longest value kept per content header; the rest is dropped (and noted).
MAX_HEADER_VALUE = 4096
#: Longest filename and content type reported.
MAX_FILENAME = 255
MAX_CONTENT_TYPE = 127
_MAX_RFC2231_SECTIONS = 64
_CONTENT_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
#: A header line as the stdlib feedparser sees one: printable name, then a colon.
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")
#: `; name = value`; an unterminated quoted string runs to the end (no backtracking).
_PARAM = re.compile(r';\s*([^\s;="]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
_COMMENT = re.compile(r"\([^()]*\)")
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class LineKind(Enum):
    HEADER = "header"  # a header line or a continuation: consumed
    END = "end"  # the empty line that ends the header block: consumed
    NOT_HEADER = "not_header"  # the body starts early with this line: not consumed


@dataclass(frozen=True, slots=True)
class EntityHeaders:
    """What the scanner needs from one entity's headers."""

    content_type: str
    transfer_encoding: str
    boundary: str | None
    filename: str | None

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def subtype(self) -> str:
        return self.content_type.partition("/")[2]


class HeaderBlock:
    """Collects the content headers of one entity, line by line or (top level)
    field by field. Other headers are skipped as they come."""

    def __init__(self, default_type: str = "text/plain") -> None:
        self.default_type = default_type
        self.lines_seen = 0
        self.defects: set[Defect] = set()
        self._values: dict[str, str] = {}
        self._current: str | None = None

    def add_field(self, name: str, value: str) -> None:
        """A whole (unfolded) header field, as pymilter's header() callback gives it."""
        self.lines_seen += 1
        self._start(name.strip().lower(), value.replace("\r", "").replace("\n", "").lstrip())

    def add_line(self, line: bytes) -> LineKind:
        """One physical header line without its "\\n" (a trailing "\\r" is allowed)."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return LineKind.END
        if line[0] in b" \t":
            self.lines_seen += 1
            if self._current is not None:
                self._append(self._current, _text(line))
            return LineKind.HEADER
        name = _HEADER_NAME.match(line)
        if name is None and not line.startswith(b"From "):
            return LineKind.NOT_HEADER
        self.lines_seen += 1
        self._current = None
        if name is not None and name.end() > 1:
            self._start(line[: name.end() - 1].decode("ascii").lower(), _text(line[name.end() :]))
        return LineKind.HEADER

    def skipped_lines(self) -> None:
        """Whole header lines the scan does not need went by (see the scanner)."""
        self.lines_seen += 1
        self._current = None

    def _start(self, name: str, value: str) -> None:
        self._current = None
        if name not in _CONTENT_HEADERS:
            return
        if name in self._values:
            self.defects.add(Defect.DUPLICATE_CONTENT_HEADER)  # the first one counts
            return
        self._current = name
        self._values[name] = ""
        self._append(name, value.lstrip(" \t"))

    @property
    def wants_continuation(self) -> bool:
        """Whether a continuation line would add to a header the scan keeps."""
        return self._current is not None

    def _append(self, name: str, text: str) -> None:
        value = self._values[name]
        room = MAX_HEADER_VALUE - len(value)
        if len(text) >= room:
            if len(text) > room:
                self.defects.add(Defect.LONG_HEADER)
            text = text[:room]
            self._current = None  # full: what follows is dropped
        self._values[name] = value + text

    def parse(self) -> EntityHeaders:
        if not self._values:  # no content headers at all: the defaults
            return EntityHeaders(self.default_type, "7bit", None, None)
        content_type = self._values.get("content-type")
        params = _params(content_type or "")
        return EntityHeaders(
            content_type=_media_type(content_type, self.default_type),
            transfer_encoding=_transfer_encoding(self._values.get("content-transfer-encoding")),
            boundary=(_param_value(params, "boundary") or "").rstrip() or None,
            filename=_filename(_params(self._values.get("content-disposition", "")), params),
        )


def _text(raw: bytes) -> str:
    # surrogateescape: a boundary with 8-bit bytes must encode back to the same bytes.
    return raw.decode("utf-8", "surrogateescape")


def to_bytes(text: str) -> bytes:
    """Header text back to the bytes it came from (a boundary must match exactly)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a byte
        return text.encode("utf-8", "replace")


def _media_type(value: str | None, default: str) -> str:
    if value is None:
        return default
    main = _COMMENT.sub("", value.partition(";")[0]).lower()
    if main.count("/") != 1:  # as the stdlib: an invalid type means text/plain
        return "text/plain"
    maintype, _, subtype = main.partition("/")
    return _printable(f"{maintype.strip()}/{subtype.strip()}", MAX_CONTENT_TYPE)


def _transfer_encoding(value: str | None) -> str:
    if value is None:
        return "7bit"
    token = _TOKEN.match(_COMMENT.sub("", value).strip().lower())
    return token.group(0) if token else "unknown"


def _params(value: str) -> dict[str, str]:
    """Parameters of a structured header, names lowercased, first one wins."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            closed = len(raw) > 1 and raw.endswith('"')
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1] if closed else raw[1:])
        params.setdefault(name, raw)
    return params


def _param_value(params: dict[str, str], name: str) -> str | None:
    """A parameter's value, RFC 2231 extended and continued forms included."""
    if name + "*" in params:
        charset, _, text = _split_charset(params[name + "*"])
        return _percent_decode(text, charset)
    if name + "*0" not in params and name + "*0*" not in params:
        return params.get(name)
    pieces: list[str] = []
    charset = "utf-8"
    for section in range(_MAX_RFC2231_SECTIONS):
        encoded = params.get(f"{name}*{section}*")
        if encoded is not None:
            if section == 0:
                charset, _, encoded = _split_charset(encoded)
            pieces.append(_percent_decode(encoded, charset))
        elif f"{name}*{section}" in params:
            pieces.append(params[f"{name}*{section}"])
        else:
            break
    return "".join(pieces)


def _split_charset(value: str) -> tuple[str, str, str]:
    parts = value.split("'", 2)
    if len(parts) < 3:
        return "utf-8", "", value
    return parts[0] or "utf-8", parts[1], parts[2]


def _percent_decode(text: str, charset: str) -> str:
    raw = unquote_to_bytes(to_bytes(text))
    try:
        return raw.decode(charset, "replace")
    except Exception:  # unknown or hostile charset name ("\0", "undefined", "hex")
        return raw.decode("latin-1")


def _filename(disposition: dict[str, str], content_type: dict[str, str]) -> str | None:
    name = _param_value(disposition, "filename")
    if name is None:
        name = _param_value(content_type, "name")
    if name is None:
        return None
    if "=?" in name:  # RFC 2047 encoded-words: not allowed in parameters, common anyway
        with contextlib.suppress(Exception):  # garbage: keep the name as it came
            name = str(make_header(decode_header(name)))
    return _printable(name, MAX_FILENAME)


def _printable(text: str, limit: int) -> str:
    """Safe to log and to quote in an SMTP reply: no control characters (CR, LF)."""
    return _UNPRINTABLE.sub("\ufffd", text).strip()[:limit]
