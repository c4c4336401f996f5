"""Files and sockets on a real host (issue 14.3): the consent ledger is 0640, and a
second milter on a live milter's socket refuses to start instead of stealing it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from sendwarden.consent.sqlite import SQLiteConsentStore
from sendwarden.consent.store import open_consent_store
from tests.support.milter_process import MilterProcess, MilterSocket
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import write_config
from tests.support.service import wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ledger_and_its_wal_are_0640_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "consent.db"
    previous = os.umask(0o022)  # the usual umask: SQLite alone would make 0644 files
    try:
        store = open_consent_store(f"sqlite:///{path}")
        try:
            assert isinstance(store, SQLiteConsentStore)
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert all(file.exists() for file in files), list(tmp_path.iterdir())
            assert {file.name: _mode(file) for file in files} == {
                file.name: 0o640 for file in files
            }
        finally:
            store.close()
    finally:
        os.umask(previous)


def test_an_older_world_readable_ledger_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "consent.db"
    open_consent_store(f"sqlite:///{path}").close()
    path.chmod(0o644)
    open_consent_store(f"sqlite:///{path}").close()
    assert _mode(path) == 0o640


def _config(tmp_path: Path, redis: RedisServer) -> Path:
    return write_config(
        tmp_path / "sendwarden.toml",
        socket=f"unix:{tmp_path / 'milter.sock'}",
        redis_url=redis.url,
    )


def test_a_second_milter_does_not_take_a_live_socket(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = _config(tmp_path, redis_server)
    sock = tmp_path / "milter.sock"
    first = MilterProcess(config, socket_mode=None)
    first.start()
    try:
        before = sock.stat().st_ino
        second = subprocess.run(
            [sys.executable, "-m", "sendwarden", "milter", "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "another milter is listening" in second.stderr
        assert "Traceback" not in second.stderr
        # The live one's socket is untouched and still answers.
        assert sock.stat().st_ino == before
        assert first.socket.accepts()
    finally:
        first.stop()
    assert not sock.exists()  # the first one removes its own socket when it stops


def test_a_stale_socket_file_is_replaced(tmp_path: Path, redis_server: RedisServer) -> None:
    config = _config(tmp_path, redis_server)
    sock = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # a socket file nobody listens on: what a crash leaves behind
    # Not MilterProcess: it removes a stale file itself before starting.
    argv = [sys.executable, "-m", "sendwarden", "milter", "-c", str(config)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(MilterSocket("unix", path=str(sock)).accepts, 20, "milter not listening",
                   abort=lambda: proc.poll() is not None)  # fmt: skip
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert not sock.exists()
