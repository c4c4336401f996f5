"""The benchmark's baselines are honest: the C libmilter no-op (built from
loadtest/noop_milter.c as `loadtest.milter` builds it) and the pymilter and asyncio
no-ops negotiate exactly what sendwarden negotiates with every rule on (the same
protocol steps, no-reply flags and macro lists), so the MTA sends each of them the
same packets and waits for the same replies; and they answer CONTINUE to every step,
whatever the message (no rule, no refusal)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.milter import NOOPS, build_c_noop, noop_argv
from sendwarden.dkim.keys import generate_key
from sendwarden.milter.adapter import protocol_steps
from tests.support.milter_client import MilterClient, connect_info, strings
from tests.support.milter_process import MilterProcess
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import write_config

CONTINUE = [(b"c", b"")]


@pytest.fixture(scope="module")
def milters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("noops")
    c_binary = build_c_noop(directory)
    key = directory / "dkim.key"
    generate_key(key)
    steps = protocol_steps(needs_body=True, data_reply=False)  # as the benchmark, unix
    started: list[MilterProcess] = []
    with RedisServer() as redis:
        try:
            paths = {}
            for name in NOOPS:
                path = str(directory / f"{name}.sock")
                argv = noop_argv(name, f"unix:{path}", steps, c_binary)
                started.append(
                    MilterProcess(argv=argv, socket=f"unix:{path}", log_path=directory / name)
                )
                paths[name] = path
            path = str(directory / "sendwarden.sock")
            config = write_config(
                directory / "sendwarden.toml",
                socket=f"unix:{path}",
                redis_url=redis.url,
                policy={"check_attachments": True},
                extra={"dkim": [{"domain": "acme.example", "selector": "s", "key_file": str(key)}]},
            )
            started.append(MilterProcess(config, log_path=directory / "sendwarden.log"))
            paths["sendwarden"] = path
            for process in started:
                process.start()
            yield paths
        finally:
            for process in started:
                process.stop()


def test_every_no_op_negotiates_what_sendwarden_negotiates(milters: dict[str, str]) -> None:
    with MilterClient(milters["sendwarden"]) as client:
        client.negotiate()
        wanted = (client.protocol, client.symlists)
    assert client.symlists  # macro lists were asked for
    for name in NOOPS:
        with MilterClient(milters[name]) as client:
            client.negotiate()
            assert (client.protocol, client.symlists) == wanted, name


@pytest.mark.parametrize("name", NOOPS)
def test_a_no_op_continues_at_every_step(milters: dict[str, str], name: str) -> None:
    """Even for mail sendwarden refuses (an unauthenticated relay attempt)."""
    with MilterClient(milters[name]) as client:
        client.negotiate()
        client.macros(b"C", {"j": "mx.hosting.example"})
        assert client.command(b"C", connect_info("client.example", "192.0.2.7", 4711)) == []
        client.macros(b"M", {"i": ""})
        assert client.command(b"M", strings("<x@spam.example>")) == CONTINUE
        assert client.command(b"R", strings("<victim@remote.example>")) == CONTINUE
        assert client.command(b"L", strings("From", "x@spam.example")) == []
        assert client.command(b"B", b"Hello.\r\n") == []
        assert client.command(b"E") == CONTINUE
