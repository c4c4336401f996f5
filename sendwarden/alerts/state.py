"""What the abuse desk has been told, kept in the Redis every host shares, so an alert
process on any host (or a restarted one) knows what is already reported."""

from __future__ import annotations

import json
import logging
import typing
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import redis

from sendwarden.alerts.rules import Reported
from sendwarden.store.redis import redis_errors

log = logging.getLogger(__name__)

#: Longest a sweep may hold the lock before another host may start one.
SWEEP_LOCK_SECONDS = 600

# Deletes the lock only if it is still ours (it may have expired and been taken).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


class ReportedStore:
    """One hash, condition key -> JSON of :class:`Reported`."""

    def __init__(self, client: redis.Redis, prefix: str = "sw") -> None:
        self._client = client
        self.key = f"{prefix}:alerts:reported"
        self._lock_key = f"{prefix}:alerts:sweep-lock"

    def load(self) -> dict[str, Reported]:
        with redis_errors("reading the reported alerts"):
            raw = typing.cast(dict[bytes, bytes], self._client.hgetall(self.key))
        reported = {}
        for field, value in raw.items():
            key = field.decode()
            try:
                reported[key] = Reported(**json.loads(value))
            except (ValueError, TypeError):
                log.warning("unreadable reported alert %r dropped; it will be reported anew", key)
        return reported

    def save(self, before: Mapping[str, Reported], after: Mapping[str, Reported]) -> None:
        """Write only what changed between ``before`` and ``after``."""
        changed = {
            key: json.dumps(vars(value)) for key, value in after.items() if before.get(key) != value
        }
        gone = [key for key in before if key not in after]
        if not changed and not gone:
            return
        with redis_errors("saving the reported alerts"):
            pipe = self._client.pipeline(transaction=False)
            if changed:
                pipe.hset(self.key, mapping=changed)
            if gone:
                pipe.hdel(self.key, *gone)
            pipe.execute()

    @contextmanager
    def sweep_lock(self) -> Iterator[bool]:
        """True when this process may sweep now: one sweep at a time across hosts."""
        token = uuid.uuid4().hex
        with redis_errors("taking the sweep lock"):
            acquired = bool(self._client.set(self._lock_key, token, nx=True, ex=SWEEP_LOCK_SECONDS))
        try:
            yield acquired
        finally:
            if acquired:
                with redis_errors("releasing the sweep lock"):
                    self._client.eval(_RELEASE, 1, self._lock_key, token)
