"""The uid behind a sendmail(1) submission, read from Postfix's queue file.

Postfix records the submitting uid in exactly one place a submitter cannot write:
pickup(8) starts the message content with its own ``Received: by HOST (Postfix,
from userid N)`` header, where N is the owner of the maildrop file postdrop(1)
created. Postfix hides that header from milters and sends no macro with the uid,
so the milter reads it at end of message from ``incoming/QUEUEID`` (run the milter
as user postfix so it may).

The queue file is a sequence of typed records (Postfix ``rec_type.h``): a type
byte, the length in 7-bit groups (least significant first, high bit set on all
but the last), then the data. Everything before the content-start record
(``M``) is envelope: the full name given with ``-F`` (``F``), the sender
(``S``), recipients (``R``, ``O``), attributes (``A``), all of it the
submitter's to write and as long as it likes. The uid is taken only from the
*first content record* after ``M``, which pickup writes before copying a single
byte of the submitter's message: text the submitter wrote anywhere (full name,
envelope, headers imitating Postfix's) is never read as the uid, and there is no
size window to overflow. A file that is not shaped like that gives no uid; the
message is then the unknown local sender's (counted, never waved through).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

REC_TYPE_SIZE = ord("C")  # first record, written by cleanup
REC_TYPE_MESG = ord("M")  # start of message content
REC_TYPE_NORM = ord("N")  # one line of content
REC_TYPE_PTR = ord("p")  # pointer to the next record (after a milter's header edit)
REC_TYPE_END = ord("E")
MAX_RECORD = 1 << 31  # a length beyond this is a corrupt (or foreign) file
MAX_POINTERS = 64  # pointer records followed before the first content record
_PICKUP_RECEIVED = re.compile(rb"Received: by [^\s()]+ \([^()]*, from userid (\d+)\)")
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")
_warned: set[str] = set()


class QueueFileError(ValueError):
    """A queue file that is not shaped like one pickup and cleanup wrote."""


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


def read_record(handle: BinaryIO) -> tuple[int, bytes]:
    """One record: (type, data). QueueFileError at a truncated or absurd record."""
    head = handle.read(1)
    if not head:
        raise QueueFileError("the file ends before the message content")
    length = shift = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise QueueFileError("the file ends inside a record length")
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
        if length > MAX_RECORD or shift > 35:
            raise QueueFileError("a record length is out of range")
    data = handle.read(length)
    if len(data) != length:
        raise QueueFileError("the file ends inside a record")
    return head[0], data


def uid_from_queue_file(handle: BinaryIO) -> int:
    """The uid pickup recorded: from the first content record, and nowhere else."""
    record_type, _ = read_record(handle)
    if record_type != REC_TYPE_SIZE:
        raise QueueFileError("the first record is not the size record cleanup writes")
    while True:  # the envelope: skipped record by record, however long
        record_type, _ = read_record(handle)
        if record_type == REC_TYPE_MESG:
            break
        if record_type == REC_TYPE_END:
            raise QueueFileError("the file has no message content")
    for _ in range(MAX_POINTERS):
        record_type, data = read_record(handle)
        if record_type != REC_TYPE_PTR:
            break
        try:
            offset = int(data.strip() or b"0")
        except ValueError:
            raise QueueFileError("a pointer record holds no offset") from None
        if offset > 0:
            handle.seek(offset)
    else:
        raise QueueFileError("too many pointer records")
    match = _PICKUP_RECEIVED.fullmatch(data) if record_type == REC_TYPE_NORM else None
    if match is None:
        raise QueueFileError("the message content does not start with pickup's Received line")
    return int(match.group(1))


def submitting_uid(queue_directory: str, queue_id: str) -> int | None:
    """The uid that submitted a local message, or None when it cannot be read (the
    caller then attributes the message to the unknown local sender)."""
    path = queue_file(queue_directory, queue_id)
    if path is None:
        log.warning("no queue file for %s in %s/incoming: uid unknown", queue_id, queue_directory)
        return None
    try:
        with path.open("rb") as handle:
            return uid_from_queue_file(handle)
    except QueueFileError as error:
        log.warning("queue file %s: %s: uid unknown", path, error)
    except OSError as error:
        if queue_directory not in _warned:
            _warned.add(queue_directory)
            log.warning(
                "cannot read Postfix queue files in %s (%s): sendmail(1) mail is counted as "
                "the unknown local sender's; run the milter as user postfix",
                queue_directory,
                error.strerror,
            )
    return None
