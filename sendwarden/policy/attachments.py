"""No file over the cap, sent or received: judged on each file's decoded size."""

from __future__ import annotations

from sendwarden.attachments.report import PartSize, ScanReport, oversized_file
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE = "attachment-size"
DEPTH_RULE = "mime-depth"


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def describe(part: PartSize) -> str:
    """How the reply names the part: its file name, or what it is."""
    if part.filename:
        return f'"{part.filename}"'
    if part.role != "part":
        return f"the text outside the parts of a {part.content_type} ({part.role})"
    return f"an unnamed {part.content_type} part"


def attachment_verdict(
    report: ScanReport, max_bytes: int, max_depth: int, account_id: str | None
) -> Verdict | None:
    """552 5.3.4 for a file over the cap; 554 5.6.0 for a structure nested deeper than
    ``max_depth`` (whose inner sizes cannot be trusted)."""
    if report.depth_exceeded:
        return reject(
            DEPTH_RULE,
            "554",
            "5.6.0",
            f"Message from {account_label(account_id)} refused: its MIME parts are nested "
            f"more than {max_depth} levels deep, which no mail client produces. Send the "
            "files as ordinary attachments.",
        )
    largest = oversized_file(report, max_bytes)
    if largest is None:
        return None
    name = describe(largest)
    return reject(
        RULE,
        "552",
        "5.3.4",
        f"Message from {account_label(account_id)} refused: {name} is "
        f"{megabytes(largest.decoded_bytes)} ({largest.decoded_bytes} bytes), over the "
        f"limit of {megabytes(max_bytes)} ({max_bytes} bytes) per file. Share large files "
        "with a download link instead.",
    )
