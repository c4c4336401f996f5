"""Per-file size cap: a streaming MIME scanner that measures every part's decoded
size without holding the message, and the rule the policy core applies to it.

    scanner = AttachmentScanner(max_depth=20)
    scanner.add_header(name, value)      # top-level header fields, in order
    scanner.feed(chunk)                  # body chunks, any size, any split
    report = scanner.finish()            # ScanReport
    hit = oversized_file(report, max_bytes=20 * 1024 * 1024)
"""

from sendwarden.attachments.report import (
    Defect,
    PartRole,
    PartSize,
    ScanReport,
    oversized_file,
)
from sendwarden.attachments.scanner import AttachmentScanner, scan_message

__all__ = [
    "AttachmentScanner",
    "Defect",
    "PartRole",
    "PartSize",
    "ScanReport",
    "oversized_file",
    "scan_message",
]
