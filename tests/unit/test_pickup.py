"""Reading the uid of a sendmail(1) submission from a Postfix queue file, by its
record structure: only pickup's first content record counts, however long the
envelope and whatever the submitter wrote."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendwarden.milter.pickup import QueueFileError, submitting_uid, uid_from_queue_file

SIZE = b"            312             364               2               0             312"
PICKUP = b"Received: by mta.hosting.example (Postfix, from userid 1001)"
IMITATION = b"Received: by mta.hosting.example (Postfix, from userid 0)"


def record(kind: str, data: bytes) -> bytes:
    """One record as Postfix's rec_put() writes it."""
    length, encoded = len(data), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return kind.encode() + bytes(encoded) + data


def queue_file(
    *,
    full_name: bytes = b"",
    sender: bytes = b"web@acme.example",
    recipients: tuple[bytes, ...] = (b"bob@remote.example",),
    content: tuple[bytes, ...] = (PICKUP, b"\tid 4cKx2Q0d1Tz9v; Sun, 22 Nov 2026 07:00:00 +0000"),
    end: bool = True,
) -> bytes:
    """A queue file shaped like the ones cleanup writes (measured with the e2e rig)."""
    parts = [record("C", SIZE), record("T", b"1795335000 0"), record("A", b"rewrite_context=local")]
    if full_name:
        parts.append(record("F", full_name))
    parts.append(record("S", sender))
    for rcpt in recipients:
        parts += [
            record("A", b"dsn_orig_rcpt=rfc822;" + rcpt),
            record("O", rcpt),
            record("R", rcpt),
        ]
    parts.append(record("M", b""))
    parts += [record("N", line) for line in content]
    if end:
        parts += [record("X", b""), record("E", b"")]
    return b"".join(parts)


def uid_of(data: bytes) -> int:
    return uid_from_queue_file(io.BytesIO(data))


@pytest.mark.parametrize("hashed", [False, True])
def test_uid_from_the_incoming_queue_file(tmp_path: Path, hashed: bool) -> None:
    folder = tmp_path / "incoming" / ("4" if hashed else "")
    folder.mkdir(parents=True)
    (folder / "4cKx2Q0d1Tz9v").write_bytes(queue_file())
    assert submitting_uid(str(tmp_path), "4cKx2Q0d1Tz9v") == 1001


def test_missing_file_or_odd_queue_id_gives_none(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    assert submitting_uid(str(tmp_path), "4cKx2Q0d1Tz9v") is None
    assert submitting_uid(str(tmp_path), "../../etc/passwd") is None
    assert submitting_uid(str(tmp_path / "absent"), "ABCDEF123") is None


def test_an_envelope_far_larger_than_any_window_is_skipped_record_by_record() -> None:
    recipients = tuple(f"r{i:05}@remote.example".encode() for i in range(3000))
    data = queue_file(full_name=IMITATION * 100, recipients=recipients)
    assert len(data) > 64 * 1024
    assert uid_of(data) == 1001


def test_text_the_submitter_wrote_is_never_the_uid() -> None:
    data = queue_file(
        full_name=IMITATION,
        sender=b"(Postfix, from userid 0)@x.example",
        content=(PICKUP, b"\tid 4cKx2Q0d1Tz9v", IMITATION, b"Subject: " + IMITATION),
    )
    assert uid_of(data) == 1001


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "ends before"),
        (record("T", b"1") + record("M", b""), "size record"),
        (queue_file(content=(IMITATION[:-1] + b" x)",)), "pickup's Received"),
        (queue_file(content=(b"Subject: hi", PICKUP)), "pickup's Received"),  # not first
        (queue_file(content=()), "pickup's Received"),  # no content line at all
        (queue_file(content=(), end=False)[:-3], "ends"),  # truncated mid-envelope
        (record("C", SIZE) + record("E", b""), "no message content"),
        (record("C", SIZE) + b"S\xff\xff\xff\xff\xff\xff\x01", "out of range"),
    ],
)
def test_files_not_shaped_like_postfixs_give_no_uid(data: bytes, problem: str) -> None:
    with pytest.raises(QueueFileError, match=problem):
        uid_of(data)


def test_pointer_records_are_followed_like_postfix_does() -> None:
    """A milter's header edit leaves a pointer record where content used to start."""
    head = queue_file(content=(), end=False)
    moved = record("N", PICKUP) + record("N", b"\tid X")
    pointer_len = len(record("p", b"%15d" % 0))
    target = len(head) + pointer_len + len(record("N", b"Subject: decoy"))
    data = head + record("p", b"%15d" % target) + record("N", b"Subject: decoy") + moved
    assert uid_of(data) == 1001


@settings(max_examples=200, deadline=None)
@given(
    full_name=st.binary(max_size=300),
    sender=st.binary(min_size=1, max_size=300),
    recipients=st.lists(st.binary(min_size=1, max_size=200), max_size=20),
    headers=st.lists(st.binary(max_size=200), max_size=10),
    claimed=st.integers(min_value=0, max_value=2**31),
)
def test_whatever_the_submitter_writes_the_uid_is_pickups(
    full_name: bytes, sender: bytes, recipients: list[bytes], headers: list[bytes], claimed: int
) -> None:
    claim = b"Received: by x (Postfix, from userid %d)" % claimed
    data = queue_file(
        full_name=full_name + claim,
        sender=claim + sender,
        recipients=(*recipients, claim),
        content=(PICKUP, b"\tid Q", claim, *headers),
    )
    assert uid_of(data) == 1001


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_raises_anything_but_queue_file_error(data: bytes) -> None:
    with contextlib.suppress(QueueFileError):
        uid_of(data)
