"""What a scan found, and the rule the policy core applies to it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

#: "part" is a leaf MIME part (a file, a text body). "preamble" and "epilogue" are
#: the text a multipart carries outside its parts: no client shows it as a file, but
#: it is counted too, so nothing can be smuggled there. "embedded" is a file carried
#: inside a text part (uuencode, yEnc, BinHex), which mail clients show as a file.
PartRole = Literal["part", "preamble", "epilogue", "embedded"]


class Defect(StrEnum):
    """Ways a message was malformed. Scanning carries on; sizes stay conservative."""

    DEPTH_EXCEEDED = "depth_exceeded"
    MISSING_START_BOUNDARY = "missing_start_boundary"
    UNCLOSED_MULTIPART = "unclosed_multipart"
    MULTIPART_WITHOUT_BOUNDARY = "multipart_without_boundary"
    ENCODED_CONTAINER = "encoded_container"
    BASE64_JUNK = "base64_junk"
    LONG_HEADER = "long_header"
    DUPLICATE_CONTENT_HEADER = "duplicate_content_header"


@dataclass(frozen=True, slots=True)
class PartSize:
    """One leaf part (or preamble/epilogue) and the size of its decoded content."""

    filename: str | None
    content_type: str
    decoded_bytes: int
    encoded_bytes: int
    transfer_encoding: str
    depth: int
    role: PartRole = "part"


@dataclass(frozen=True, slots=True)
class Fragment:
    """A ``message/partial`` part: one fragment of a message sent in parts."""

    message_id: str  # the id parameter ('' when missing)
    number: int  # 0 when missing or not a number
    total: int  # 0 when not declared (only the last fragment must declare it)
    size: int = 0  # bytes of this fragment's body


@dataclass(frozen=True, slots=True)
class ScanReport:
    """The facts the attachment rule needs; bounded whatever the message held.

    `parts` holds the first `keep_parts` parts only (0 unless asked for): the rule
    needs `largest`, the tests and logs may want more. `ambiguities` says, in words,
    why the message can be read more than one way (then it is refused whatever the
    sizes); `fragments` lists its message/partial parts.
    """

    largest: PartSize | None
    parts_seen: int
    depth_exceeded: bool
    defects: tuple[Defect, ...]
    body_bytes: int
    parts: tuple[PartSize, ...] = ()
    ambiguities: tuple[str, ...] = ()
    fragments: tuple[Fragment, ...] = ()


def oversized_file(report: ScanReport, max_bytes: int) -> PartSize | None:
    """The largest part if its decoded size is over `max_bytes` (exactly
    `max_bytes` is allowed), else None. The cap is per file, not per message."""
    largest = report.largest
    if largest is not None and largest.decoded_bytes > max_bytes:
        return largest
    return None
