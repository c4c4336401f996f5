"""The Redis connection every MTA host shares, with bounded timeouts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import redis

from sendwarden import metrics
from sendwarden.config import RedisSettings
from sendwarden.store import StoreError


def connect(settings: RedisSettings) -> redis.Redis:
    """A pooled client; a slow or dead Redis costs at most ``timeout_ms`` per call."""
    timeout = settings.timeout_ms / 1000
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=30,
        decode_responses=False,
    )


def account_key(prefix: str, account_id: str, name: str) -> str:
    """``prefix:{account}:name``: one hash tag per account, so an account's keys share a
    Redis Cluster slot and one Lua script may touch them all."""
    return f"{prefix}:{{{account_id}}}:{name}"


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn any redis-py failure into a StoreError naming what was being done (and count
    and time the call for the metrics)."""
    recorder = metrics.current()  # inline, not a second context manager: the hot path
    started = time.perf_counter() if recorder is not None else 0.0
    try:
        yield
    except redis.RedisError as error:
        if recorder is not None:
            recorder.store_done("redis", time.perf_counter() - started, True)
        raise StoreError("redis", f"{what}: {error}") from error
    if recorder is not None:
        recorder.store_done("redis", time.perf_counter() - started, False)
