"""The servers open the durable database when they start, not at the first message.

Before, the milter and the proxy opened the consent database (importing the driver,
connecting, checking the schema) for the first message that needed it; on a loaded
host that took longer than ``consent.timeout_ms`` right after a restart, and the
messages behind it were tempfailed although the database was up. Now the open starts
in the background as the server starts (and as a reload names another database),
through the same lock, so the first messages find it open. A database that cannot be
opened then costs one log line, and the first message reports it as before.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendwarden.config import settings_from_mapping
from sendwarden.runtime import build_runtime
from sendwarden.store import StoreError
from sendwarden.store.suspensions import SharedDatabase
from tests.integration.test_consent_faults import bulk_config, send
from tests.integration.test_reload_connections import sqlite_settings
from tests.support.milter_client import MilterClient, connect_info, strings
from tests.support.milter_process import MilterProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import write_config
from tests.support.service import wait_until

WARMUP_FAILED = "consent database not opened ahead of the first message"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def server_config(kind: str, directory: Path, redis_url: str, database: str) -> Path:
    """A milter's or a Postfix-mode proxy's config naming ``database``."""
    extra: dict[str, Any] = {}
    if kind == "proxy":
        extra["proxy"] = {
            "listen": f"unix:{directory / 'proxy.sock'}",
            "next_hop": f"127.0.0.1:{free_port()}",  # never reached: no message is sent
            "mta": "postfix",
        }
    return write_config(
        directory / "sendwarden.toml",
        socket=f"unix:{directory / 'milter.sock'}",
        redis_url=redis_url,
        consent_database=database,
        extra=extra,
    )


def start_server(kind: str, config: Path) -> MilterProcess:
    if kind == "proxy":
        argv = [sys.executable, "-m", "sendwarden", "proxy", "-c", str(config)]
        socket = f"unix:{config.parent / 'proxy.sock'}"
        return MilterProcess(
            argv=argv, socket=socket, log_path=config.parent / "server.log"
        ).start()
    return MilterProcess(config, log_path=config.parent / "server.log").start()


def tables(path: Path) -> set[str]:
    """The tables of the SQLite database at ``path`` (none while it does not exist:
    opened read-only, so looking never creates it)."""
    if not path.exists():
        return set()
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return set()
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(name) for (name,) in rows}
    except sqlite3.Error:  # being created right now
        return set()
    finally:
        connection.close()


def wait_for_schema(path: Path, server: MilterProcess) -> None:
    wait_until(
        lambda: {"account_suspensions", "consent_events"} <= tables(path),
        30,
        f"{path} was not created without a message\n{server.log()}",
    )


@pytest.mark.parametrize("kind", ["milter", "proxy"])
def test_the_database_is_opened_before_any_message(
    kind: str, redis_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "consent.db"
    server = start_server(kind, server_config(kind, tmp_path, redis_url, f"sqlite:///{database}"))
    try:
        wait_for_schema(database, server)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("kind", ["milter", "proxy"])
def test_a_reload_naming_another_database_opens_it(
    kind: str, redis_url: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    config = server_config(kind, tmp_path, redis_url, f"sqlite:///{first}")
    server = start_server(kind, config)
    try:
        wait_for_schema(first, server)
        server_config(kind, tmp_path, redis_url, f"sqlite:///{second}")  # rewritten
        assert server.pid is not None
        os.kill(server.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in server.log(), 30, server.log())
        wait_for_schema(second, server)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize(
    "database",
    [
        pytest.param(lambda tmp: f"sqlite:///{tmp / 'missing' / 'consent.db'}", id="sqlite"),
        pytest.param(lambda tmp: f"postgresql://sw@127.0.0.1:{free_port()}/sw", id="postgresql"),
    ],
)
def test_a_database_that_cannot_be_opened_at_start_is_reported_by_the_first_message(
    database: Any, redis_url: str, tmp_path: Path
) -> None:
    """The milter starts and serves; the warm-up says so in one line, without a
    traceback; the first message that needs the database (the suspension lookup of
    an account Redis knows nothing of) is tempfailed as before, and the outage is
    logged once, as before."""
    server = start_server(
        "milter", server_config("milter", tmp_path, redis_url, database(tmp_path))
    )
    try:
        wait_until(lambda: WARMUP_FAILED in server.log(), 30, server.log())
        with MilterClient(str(tmp_path / "milter.sock")) as client:
            client.negotiate()
            client.macros(b"C", {"j": "mx.hosting.example", "{daemon_name}": "smtpd"})
            client.command(b"C", connect_info("client.example", "192.0.2.7", 40001))
            client.macros(b"M", {"{auth_authen}": "alice@acme.example", "i": ""})
            replies = client.command(b"M", strings("<alice@acme.example>", "SIZE=100"))
    finally:
        server.stop()
    log = server.log()
    assert any(code == b"y" and data.startswith(b"451 4.3.0") for code, data in replies), replies
    assert log.count(WARMUP_FAILED) == 1, log
    assert log.count("consent database is unavailable") == 1, log
    assert "Traceback" not in log, log


def test_a_runtime_opens_the_database_only_when_a_server_asks(
    redis_url: str, tmp_path: Path
) -> None:
    """build_runtime alone (a command that needs no database) opens nothing; the
    servers' open_stores_soon opens it, once, for the messages to use."""
    path = tmp_path / "consent.db"
    runtime = build_runtime(settings_from_mapping(bulk_config(redis_url, f"sqlite:///{path}")))
    try:
        assert not path.exists()
        assert runtime.database is not None
        warming = runtime.database.open_soon()
        assert warming is not None
        warming.join(30)
        assert {"account_suspensions", "consent_events"} <= tables(path)
        store = runtime.database()
        assert runtime.database.open_soon() is None  # open already: nothing to start
        # bulk mail, no consent on record: the ledger's answer (not a 451)
        assert send(runtime.pipeline, 60).startswith("550 5.7.1")
        assert runtime.database() is store
    finally:
        runtime.close()


def test_a_late_warm_up_does_not_open_a_closed_database(tmp_path: Path) -> None:
    """A reload or a stop may close a configuration before its warm-up ran: the
    warm-up then opens nothing (no pool left open that nobody would close)."""
    path = tmp_path / "consent.db"
    database = SharedDatabase(sqlite_settings(path))
    database.close()
    assert database.open_soon() is None
    with pytest.raises(StoreError, match="closed"):
        database()
    assert not path.exists()
