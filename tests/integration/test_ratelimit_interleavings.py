"""The rate limit's exactness on the real Lua scripts: concurrent transactions of one
account (batches reserved at MAIL, recipients accepted provisionally within the room
seen, given back or counted all or none at end of message, aborts) on a real Redis.
The same property as tests/unit/test_ratelimit_check.py holds against the pure model
counter; here the scripts themselves (reserve.lua, settle.lua, refund.lua) answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings

from sendwarden.checks.ratelimit import RecipientRateCheck
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import RedisSettings
from sendwarden.pipeline import Pipeline
from sendwarden.ratelimit.counter import counter_from_settings
from sendwarden.store.redis import connect
from tests.support.redis_server import RedisServer
from tests.unit.fakes import MemorySuspensions
from tests.unit.test_ratelimit_check import build, interleavings, run_interleaving


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = connect(RedisSettings(url=redis_server.url, timeout_ms=2000))
    yield client
    client.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=interleavings())
def test_the_scripts_never_count_more_than_the_limit_nor_defer_without_cause(
    client: redis.Redis, case: tuple[int, list[tuple[str, int]]]
) -> None:
    """Never more than the limit in the window; a recipient deferred only when the
    accepted recipients plus what other transactions hold unused fill the limit, a
    message at its end only when they exceed it; and at the end the window holds
    exactly the accepted messages' recipients (what batches did not use went back)."""
    limit, steps = case
    client.flushdb()  # each example starts from an empty window
    _, _, config = build(limit=limit)  # no automatic suspension: deferrals strike nobody
    counter = counter_from_settings(config, client)
    checks = [
        SuspensionCheck(MemorySuspensions()),
        RelayCheck(config.policy.local_domains),
        RecipientRateCheck(counter, config),
    ]
    pipeline = Pipeline(config, checks)
    run_interleaving(pipeline, lambda: counter.usage("acme").used, limit, steps)
