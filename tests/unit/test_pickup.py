"""Reading the uid of a sendmail(1) submission from a Postfix queue file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendwarden.milter.pickup import submitting_uid

QUEUE_FILE = (
    b"C  1234  567  2 0 1234 0\x00"
    b"T1795335000 0\x00Aloghost=localhost\x00"
    b"NReceived: by mta.hosting.example (Postfix, from userid 1001)\x00"
    b"N\tid 4cKx2Q0d1Tz9v; Sun, 22 Nov 2026 07:00:00 +0000 (UTC)\x00"
    b"NSubject: (Postfix, from userid 0)\x00"
)


@pytest.mark.parametrize("hashed", [False, True])
def test_uid_from_the_incoming_queue_file(tmp_path: Path, hashed: bool) -> None:
    folder = tmp_path / "incoming" / ("4" if hashed else "")
    folder.mkdir(parents=True)
    (folder / "4cKx2Q0d1Tz9v").write_bytes(QUEUE_FILE)
    assert submitting_uid(str(tmp_path), "4cKx2Q0d1Tz9v") == 1001


def test_missing_file_or_odd_queue_id_gives_none(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    assert submitting_uid(str(tmp_path), "4cKx2Q0d1Tz9v") is None
    assert submitting_uid(str(tmp_path), "../../etc/passwd") is None
    assert submitting_uid(str(tmp_path / "absent"), "ABCDEF123") is None
