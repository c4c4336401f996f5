"""No file over the cap, sent or received: judged on each file's decoded size,
on the one reading of the message every mail program shares (or not at all)."""

from __future__ import annotations

from typing import Literal

from sendwarden.attachments.report import Fragment, PartSize, ScanReport, oversized_file
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE = "attachment-size"
DEPTH_RULE = "mime-depth"
AMBIGUOUS_RULE = "mime-ambiguous"
PARTIAL_RULE = "message-partial"

#: What to do with message/partial: refuse it, or count its fragments across messages.
MessagePartialAction = Literal["refuse", "count"]


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def describe(part: PartSize) -> str:
    """How the reply names the part: its file name, or what it is."""
    if part.role == "embedded":
        kind = part.transfer_encoding
        return (
            f'"{part.filename}" ({kind} inside a text part)'
            if part.filename
            else (f"a {kind} file inside a text part")
        )
    if part.filename:
        return f'"{part.filename}"'
    if part.role != "part":
        return f"the text outside the parts of a {part.content_type} ({part.role})"
    return f"an unnamed {part.content_type} part"


def attachment_verdict(
    report: ScanReport,
    max_bytes: int,
    max_depth: int,
    account_id: str | None,
    message_partial: MessagePartialAction = "refuse",
) -> Verdict | None:
    """552 5.3.4 for a file over the cap; 554 5.6.0 for a structure nested deeper than
    ``max_depth`` (whose inner sizes cannot be trusted), for a message that can be
    read more than one way, and (unless counted) for a message/partial fragment."""
    if report.ambiguities:
        return ambiguous_verdict(report.ambiguities, account_id)
    if report.depth_exceeded:
        return reject(
            DEPTH_RULE,
            "554",
            "5.6.0",
            f"Message from {account_label(account_id)} refused: its MIME parts are nested "
            f"more than {max_depth} levels deep, which no mail client produces. Send the "
            "files as ordinary attachments.",
        )
    if report.fragments and message_partial == "refuse":
        return partial_verdict(account_id)
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


def ambiguous_verdict(reasons: tuple[str, ...], account_id: str | None) -> Verdict:
    """554 5.6.0: mail programs would read the message differently, so no size of
    ours can be trusted to be the one the recipient gets."""
    return reject(
        AMBIGUOUS_RULE,
        "554",
        "5.6.0",
        f"Message from {account_label(account_id)} refused: its MIME structure can be "
        f"read more than one way ({'; '.join(reasons[:3])}), so mail programs would "
        "not agree on its attachments. Send it again from an ordinary mail program.",
    )


def partial_verdict(account_id: str | None) -> Verdict:
    """554 5.6.0: a fragment of a message sent in parts (refused by default: each
    fragment would pass the per-file limit that the whole file is over)."""
    return reject(
        PARTIAL_RULE,
        "554",
        "5.6.0",
        f"Message from {account_label(account_id)} refused: it is one fragment of a "
        "message split into several (message/partial), which would get a file past the "
        "per-file limit in pieces. Send the file whole or share a link.",
    )


def fragments_verdict(
    fragment: Fragment, total_bytes: int, max_bytes: int, account_id: str | None
) -> Verdict | None:
    """552 5.3.4 once the fragments of one message/partial id add up to more than
    ``max_bytes`` (the whole message bounds every file in it), else None."""
    if total_bytes <= max_bytes:
        return None
    return reject(
        RULE,
        "552",
        "5.3.4",
        f"Message from {account_label(account_id)} refused: the fragments of the message "
        f"sent in parts as id {_printable(fragment.message_id)!r} add up to "
        f"{megabytes(total_bytes)} ({total_bytes} bytes) with this one, over the limit of "
        f"{megabytes(max_bytes)} ({max_bytes} bytes) per file. Send the file whole or share "
        "a link.",
    )


def _printable(text: str, limit: int = 80) -> str:
    return "".join(char if char.isprintable() else "?" for char in text[:limit])
