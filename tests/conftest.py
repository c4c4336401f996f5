"""Fixtures shared by every test layer: a private Redis and an SMTP sink.

Both are real servers on 127.0.0.1 free ports, never the system's services.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support.redis_server import RedisServer
from tests.support.sink import SmtpSink

# What the property tests assert is behaviour, not time: on a shared, loaded machine an
# example can take longer than hypothesis' default 200 ms deadline and fail as "flaky"
# (seen in tests/unit/test_replies.py while other suites ran).
hypothesis_settings.register_profile("sendwarden", deadline=None)
# CI (CI=true) replays the same examples every run (seeded from each test's own code),
# so that a landing is judged on the change, not on which random examples came up; a
# developer's `make test` keeps exploring new ones, and what it finds becomes an example
# test (see FOUND_CASES in tests/unit/test_attachment_differential.py).
hypothesis_settings.register_profile("sendwarden-ci", deadline=None, derandomize=True)
hypothesis_settings.load_profile(
    "sendwarden-ci" if os.environ.get("CI", "").lower() == "true" else "sendwarden"
)


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One redis-server for the whole run (tests get it through ``redis_server``)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(redis_server_session: RedisServer) -> Iterator[RedisServer]:
    """The shared Redis, running and empty at the start of each test.

    A test may stop it (to see a store outage) and start it again; it is restarted here
    if a test left it stopped, on the same port, so ``url`` stays valid.
    """
    server = redis_server_session
    if not server.running:
        server.start()
    server.flushall()
    yield server
    if not server.running:
        server.start()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An SMTP sink on 127.0.0.1 recording what it receives (``wait_for``, ``messages``)."""
    with SmtpSink() as sink:
        yield sink
