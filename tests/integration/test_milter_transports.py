"""The asyncio milter transport prototype (loadtest/asyncio_milter.py) answers the
MTA's packets exactly as libmilter does with the same adapter: the same negotiation,
the same replies and reply texts, the same header edits, byte for byte (the DKIM
signature's time-dependent tags aside). Both run as processes on their own unix
sockets; the MTA side is tests/support/milter_client.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sendwarden.dkim.keys import generate_key
from tests.support.milter_client import MilterClient, connect_info, strings
from tests.support.milter_process import MilterProcess
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import write_config

Replies = list[tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def milters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    key = tmp_path_factory.mktemp("key") / "dkim.key"
    generate_key(key)
    started: list[MilterProcess] = []
    servers: list[RedisServer] = []
    try:
        paths = {}
        for transport in ("libmilter", "asyncio"):
            # Each its own Redis and consent database: the same history on both sides.
            directory = tmp_path_factory.mktemp(transport)
            redis = RedisServer()
            servers.append(redis)
            redis.start()
            path = directory / f"{transport}.sock"
            config = write_config(
                directory / f"{transport}.toml",
                socket=f"unix:{path}",
                redis_url=redis.url,
                policy={"recipients_per_hour": 5, "check_attachments": True},
                extra={"dkim": [{"domain": "acme.example", "selector": "s", "key_file": str(key)}]},
            )
            argv = None
            if transport == "asyncio":
                argv = [sys.executable, "-m", "loadtest.asyncio_milter", "sendwarden", str(config)]
            process = MilterProcess(config, argv=argv, log_path=directory / f"{transport}.log")
            started.append(process)
            process.start()
            paths[transport] = str(path)
        yield paths
        for process in started:
            log = Path(process.log_path).read_text()
            assert "Traceback" not in log, log
    finally:
        for process in started:
            process.stop()
        for redis in servers:
            redis.close()


def _stable(replies: Replies) -> Replies:
    """The DKIM signature's time (t=) and signature (b=) change from run to run."""
    return [
        (code, re.sub(rb"(\bt=)\d+|(\bb=)[A-Za-z0-9+/=\s]+", rb"\1\2", data))
        for code, data in replies
    ]


def _session(path: str, script: Callable[[MilterClient], list[Replies]]) -> list[Replies]:
    with MilterClient(path) as client:
        negotiation = client.negotiate()
        return [[(b"O", negotiation)], *[_stable(r) for r in script(client)]]


def _message(
    client: MilterClient, login: str, sender: str, recipients: list[str], queue_id: str
) -> list[Replies]:
    replies = []
    client.macros(b"M", {"{auth_authen}": login, "i": ""} if login else {"i": ""})
    replies.append(client.command(b"M", strings(f"<{sender}>", "SIZE=100")))
    for recipient in recipients:
        client.macros(b"R", {"i": queue_id})
        replies.append(client.command(b"R", strings(f"<{recipient}>")))
    for name, value in (
        ("Received", f"from c (c [192.0.2.7])\n\tby mx (Postfix) with ESMTPSA id {queue_id}"),
        ("From", f"Alice <{sender}>"),
        ("To", recipients[0]),
        ("Subject", "transports"),
        ("Content-Type", "text/plain"),
    ):
        replies.append(client.command(b"L", strings(name, value)))
    replies.append(client.command(b"N"))
    replies.append(client.command(b"B", b"Hello.\r\n" * 20))
    client.macros(b"E", {"i": queue_id})
    replies.append(client.command(b"E"))
    return replies


def _connect(client: MilterClient) -> Replies:
    client.macros(b"C", {"j": "mx.hosting.example", "{daemon_name}": "smtpd"})
    return client.command(b"C", connect_info("client.example", "192.0.2.7", 40001))


SCRIPTS: dict[str, Callable[[MilterClient], list[Replies]]] = {
    "signed message": lambda c: [
        _connect(c),
        *_message(c, "alice@acme.example", "alice@acme.example", ["bob@remote.example"], "4A1"),
    ],
    "relay refused, then two messages on one connection": lambda c: [
        _connect(c),
        *_message(c, "", "x@spam.example", ["victim@remote.example"], "4A2"),
        *_message(c, "alice@acme.example", "alice@acme.example", ["a@remote.example"], "4A3"),
    ],
    "forged From refused at end of message": lambda c: [
        _connect(c),
        *_message(c, "alice@acme.example", "ceo@bank.example", ["b@remote.example"], "4A4"),
    ],
    "rate limit: the fourth recipient deferred": lambda c: [
        _connect(c),
        *_message(
            c,
            "alice@acme.example",
            "alice@acme.example",
            [f"r{n}@remote.example" for n in range(5)],
            "4A5",
        ),
    ],
    "abort, then a new transaction": lambda c: [
        _connect(c),
        [*c.command(b"M", strings("<alice@acme.example>")), *c.command(b"A")],
        *_message(c, "alice@acme.example", "alice@acme.example", ["z@remote.example"], "4A6"),
    ],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_same_replies_as_libmilter(milters: dict[str, str], name: str) -> None:
    libmilter = _session(milters["libmilter"], SCRIPTS[name])
    asyncio = _session(milters["asyncio"], SCRIPTS[name])
    assert asyncio == libmilter


def test_garbage_closes_the_connection_without_a_traceback(milters: dict[str, str]) -> None:
    for path in milters.values():
        with MilterClient(path) as client:
            client.negotiate()
            client.send_raw(b"\xff\xff\xff\xffjunk")
            assert client.closed_by_milter()
