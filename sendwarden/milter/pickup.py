"""The uid behind a sendmail(1) submission, read from Postfix's queue file.

Postfix's pickup daemon records the submitting uid in its own ``Received: by HOST
(Postfix, from userid N)`` header, but hides its own headers from milters and
sends no macro with the uid. At end of message the queue file
``incoming/QUEUEID`` already holds the message, so the milter reads the uid from
its head. This needs read access to the queue (run the milter as user postfix).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

HEAD_BYTES = 16384  # the pickup Received header is among the first records
_UID = re.compile(rb"\(Postfix, from userid (\d+)\)")
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")
_warned: set[str] = set()


def queue_file(queue_directory: str, queue_id: str) -> Path | None:
    """The incoming queue file of a message (flat or hashed ``hash_queue_names``)."""
    if not _QUEUE_ID.fullmatch(queue_id):
        return None
    incoming = Path(queue_directory) / "incoming"
    flat = incoming / queue_id
    if flat.exists():
        return flat
    return next(iter(incoming.glob(f"*/{queue_id}")), None) or next(
        iter(incoming.glob(f"*/*/{queue_id}")), None
    )


def submitting_uid(queue_directory: str, queue_id: str) -> int | None:
    """The uid that submitted a local message, or None when it cannot be read."""
    path = queue_file(queue_directory, queue_id)
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as error:
        if queue_directory not in _warned:
            _warned.add(queue_directory)
            log.warning(
                "cannot read Postfix queue files in %s (%s): sendmail(1) mail is attributed "
                "by client and sender only; run the milter as user postfix",
                queue_directory,
                error.strerror,
            )
        return None
    match = _UID.search(head)
    return int(match.group(1)) if match else None
