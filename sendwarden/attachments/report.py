"""What a scan found, and the rule the policy core applies to it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

#: "part" is a leaf MIME part (a file, a text body). "preamble" and "epilogue" are
#: the text a multipart carries outside its parts: no client shows it as a file, but
#: it is counted too, so nothing can be smuggled there.
PartRole = Literal["part", "preamble", "epilogue"]


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
class ScanReport:
    """The facts the attachment rule needs; bounded whatever the message held.

    `parts` holds the first `keep_parts` parts only (0 unless asked for): the rule
    needs `largest`, the tests and logs may want more.
    """

    largest: PartSize | None
    parts_seen: int
    depth_exceeded: bool
    defects: tuple[Defect, ...]
    body_bytes: int
    parts: tuple[PartSize, ...] = ()


def oversized_file(report: ScanReport, max_bytes: int) -> PartSize | None:
    """The largest part if its decoded size is over `max_bytes` (exactly
    `max_bytes` is allowed), else None. The cap is per file, not per message."""
    largest = report.largest
    if largest is not None and largest.decoded_bytes > max_bytes:
        return largest
    return None
