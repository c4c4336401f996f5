"""The few MIME headers a size scan needs, collected with bounded memory and
parsed with linear-time code (hostile headers must not cost quadratic time).

Besides the one reading the scanner uses, parsing says when the headers can be
read more than one way in a way that changes the structure (see the scanner's
module docstring for the list and what is done about each)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from enum import Enum
from urllib.parse import unquote_to_bytes

from sendwarden.attachments.report import Defect, Fragment

#: Longest value kept per content header; the rest is dropped (and noted).
MAX_HEADER_VALUE = 4096
#: Longest filename and content type reported.
MAX_FILENAME = 255
MAX_CONTENT_TYPE = 127
_MAX_RFC2231_SECTIONS = 64
#: Values kept per content header; more copies than this are ambiguous in themselves.
_MAX_COPIES = 4
_CONTENT_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
#: A header line as the stdlib feedparser sees one: printable name, then a colon.
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")
#: `; name = value`; an unterminated quoted string runs to the end (no backtracking).
_PARAM = re.compile(r';\s*([^\s;="]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
_COMMENT = re.compile(r"\([^()]*\)")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: A Content-* header with blanks before its colon: a header to some parsers, body
#: text to others (the stdlib among them).
_SPACED_CONTENT_NAME = re.compile(rb"(?i:content-)[\x21-\x39\x3b-\x7e]*[ \t]+:")
_T = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an RFC 2045 token
_QUOTED = r'"(?:[^"\\\r\n]|\\.)*"'
#: A Content-Type every parser reads the same way: type/subtype, then well-formed
#: `; name=value` parameters, nothing else (no comments, no stray quotes or text).
_STRICT_CONTENT_TYPE = re.compile(
    rf"[ \t]*{_T}/{_T}[ \t]*(?:;[ \t]*{_T}[ \t]*=[ \t]*(?:{_T}|{_QUOTED})[ \t]*)*;?[ \t]*"
)
_STRICT_PARAM = re.compile(rf";[ \t]*({_T})[ \t]*=[ \t]*({_T}|{_QUOTED})")
#: RFC 2046 bchars: what every parser compares the same way (no control or 8-bit
#: characters, which C string handling and charset decoding read differently).
_BOUNDARY_CHARS = re.compile(r"[0-9A-Za-z'()+_,./:=? -]+")
_CONTAINER_WORDS = re.compile(r"(?i)multipart|message")
_STRICT_ENCODING = re.compile(r"[ \t]*([A-Za-z0-9-]+)[ \t]*")


class LineKind(Enum):
    HEADER = "header"  # a header line or a continuation: consumed
    END = "end"  # the empty line that ends the header block: consumed
    NOT_HEADER = "not_header"  # the body starts early with this line: not consumed


@dataclass(frozen=True, slots=True)
class EntityHeaders:
    """What the scanner needs from one entity's headers. `ambiguity` says why they
    can be read more than one way (None: one reading)."""

    content_type: str
    transfer_encoding: str
    boundary: str | None
    filename: str | None
    ambiguity: str | None = None
    fragment: Fragment | None = None  # message/partial: its id, number and total

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
        self.ambiguities: list[str] = []
        self._values: dict[str, list[str]] = {}
        self._current: str | None = None

    def add_field(self, name: str, value: str) -> None:
        """A whole (unfolded) header field, as pymilter's header() callback gives it."""
        self.lines_seen += 1
        lowered = name.strip().lower()
        if lowered in _CONTENT_HEADERS and lowered != name.lower():
            self._spaced_name()
        if "\r" in value.replace("\r\n", ""):
            self._bare_cr()
        self._start(lowered, value.replace("\r", "").replace("\n", "").lstrip())

    def _bare_cr(self) -> None:
        self.ambiguities.append(
            "a carriage return alone in a header, a line break to some programs only"
        )

    def _spaced_name(self) -> None:
        self.ambiguities.append(
            "a Content header with blanks around its name, which some programs read "
            "as a header and others as text"
        )

    def add_line(self, line: bytes) -> LineKind:
        """One physical header line without its "\\n" (a trailing "\\r" is allowed)."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return LineKind.END
        if line[0] in b" \t":
            if b"\r" in line:
                self._bare_cr()
            self.lines_seen += 1
            if self._current is not None:
                self._append(self._current, _text(line))
            return LineKind.HEADER
        name = _HEADER_NAME.match(line)
        if name is None and not line.startswith(b"From "):
            if _SPACED_CONTENT_NAME.match(line):
                self._spaced_name()
            return LineKind.NOT_HEADER
        self.lines_seen += 1
        self._current = None
        if b"\r" in line:
            self._bare_cr()
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
        copies = self._values.setdefault(name, [])
        if copies:
            self.defects.add(Defect.DUPLICATE_CONTENT_HEADER)  # compared in parse()
            if len(copies) >= _MAX_COPIES:
                self.ambiguities.append(f"more than {_MAX_COPIES} {name} headers")
                return
        self._current = name
        copies.append("")
        self._append(name, value.lstrip(" \t"))

    @property
    def wants_continuation(self) -> bool:
        """Whether a continuation line would add to a header the scan keeps."""
        return self._current is not None

    def _append(self, name: str, text: str) -> None:
        copies = self._values[name]
        value = copies[-1]
        room = MAX_HEADER_VALUE - len(value)
        if len(text) >= room:
            if len(text) > room:
                self.defects.add(Defect.LONG_HEADER)
            text = text[:room]
            self._current = None  # full: what follows is dropped
        copies[-1] = value + text

    def parse(self) -> EntityHeaders:
        if not self._values:  # no content headers at all: the defaults
            ambiguity = self.ambiguities[0] if self.ambiguities else None
            return EntityHeaders(self.default_type, "7bit", None, None, ambiguity)
        types = self._values.get("content-type")
        content_type = types[0] if types else None
        params = _params(content_type or "")
        media_type = _media_type(content_type, self.default_type)
        ambiguities = list(self.ambiguities)
        if types and len({" ".join(value.split()) for value in types}) > 1:
            ambiguities.append("two different Content-Type headers")
        if content_type is not None:
            ambiguities.extend(_type_ambiguity(content_type, media_type))
        encoding = _transfer_encoding(self._values.get("content-transfer-encoding"))
        if encoding == CONFLICTING_ENCODINGS and media_type.startswith(("multipart/", "message/")):
            ambiguities.append("two different Content-Transfer-Encoding headers")
        fragment = None
        if media_type == "message/partial":
            fragment = Fragment(
                _param_value(params, "id") or "",
                _number(_param_value(params, "number")),
                _number(_param_value(params, "total")),
            )
        disposition = self._values.get("content-disposition")
        return EntityHeaders(
            content_type=media_type,
            transfer_encoding=encoding,
            boundary=(_param_value(params, "boundary") or "").rstrip() or None,
            filename=_filename(_params(disposition[0] if disposition else ""), params),
            ambiguity=ambiguities[0] if ambiguities else None,
            fragment=fragment,
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


#: The reading of Content-Transfer-Encoding headers that disagree: counted raw.
CONFLICTING_ENCODINGS = "conflicting"


def _transfer_encoding(values: list[str] | None) -> str:
    """The one encoding, or a reading that is counted raw (the largest: no transfer
    decoding makes content bigger): anything but a bare token (comments, extra
    words: some decoders still decode, others do not), or copies that disagree."""
    if not values:
        return "7bit"
    readings = {value.strip().lower() for value in values}
    if len(readings) > 1:
        return CONFLICTING_ENCODINGS
    token = _STRICT_ENCODING.fullmatch(values[0])
    return token.group(1).lower() if token else "unknown"


def _type_ambiguity(value: str, media_type: str) -> list[str]:
    """Why a Content-Type that makes (or might make) a container reads two ways."""
    if not _STRICT_CONTENT_TYPE.fullmatch(value):
        if _CONTAINER_WORDS.search(value):
            return [
                "a Content-Type that mail programs read differently (comments, quoting "
                "or stray characters)"
            ]
        return []
    if not media_type.startswith("multipart/"):
        return []
    boundaries = [
        (name.lower(), raw)
        for name, raw in _STRICT_PARAM.findall(value)
        if name.lower() == "boundary" or name.lower().startswith("boundary*")
    ]
    if not boundaries:
        return []
    if any(name != "boundary" for name, _ in boundaries):
        return [
            "an RFC 2231 boundary* parameter, which some mail programs do not read"
            + (" next to another boundary" if len(boundaries) > 1 else "")
        ]
    if len({raw for _, raw in boundaries}) > 1:
        return ["two different boundary parameters"]
    raw = boundaries[0][1]
    text = raw[1:-1] if raw.startswith('"') else raw
    if "\\" in text or not text or text != text.rstrip(" \t"):
        return ["a boundary that mail programs unquote differently"]
    if not _BOUNDARY_CHARS.fullmatch(text):
        return ["a boundary with characters RFC 2046 does not allow (control or 8-bit)"]
    return []


def _number(value: str | None) -> int:
    text = (value or "").strip()
    return int(text) if text.isdigit() and len(text) <= 9 else 0


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
