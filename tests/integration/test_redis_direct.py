"""The per-message scripts' connections (redis-py's connection API, no pool checks)."""

from __future__ import annotations

import pytest
import redis

from sendwarden.store.redis import DirectCalls
from tests.support.redis_server import RedisServer


def test_direct_calls_answer_survive_a_restart_and_say_when_redis_is_down(
    redis_server: RedisServer,
) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        direct = DirectCalls.for_client(client)
        assert direct is not None
        assert direct("SET", "k", "v") in (b"OK", "OK", True)
        with pytest.raises(redis.exceptions.NoScriptError):
            direct("EVALSHA", "0" * 40, 0)
        assert direct("GET", "k") == b"v"  # the connection stayed usable after an error
        redis_server.stop()
        redis_server.start()  # empty again: the idle connection is dead
        assert direct("GET", "k") is None  # replaced once, transparently
        redis_server.stop()
        try:
            with pytest.raises(redis.ConnectionError):
                direct("GET", "k")
        finally:
            redis_server.start()
        assert direct("GET", "k") is None
        direct.close()


def test_a_cluster_client_is_used_as_it_is() -> None:
    class NotPlain(redis.Redis):
        pass

    assert DirectCalls.for_client(NotPlain()) is None
