"""Which accounts are suspended, shared by every MTA host through Redis."""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Callable
from typing import Protocol

import redis

from sendwarden.policy.suspension import Suspension
from sendwarden.store.redis import account_key, redis_errors

#: Redis's entry for an account known not to be suspended.
NOT_SUSPENDED = b"-"
#: Most accounts the suspension cache remembers.
MAX_CACHED = 100_000


class SuspensionStore(Protocol):
    def get(self, account_id: str) -> Suspension | None: ...
    def suspend(self, account_id: str, suspension: Suspension) -> None: ...
    def lift(self, account_id: str) -> bool: ...


class RedisSuspensionStore:
    """One small JSON value per suspended account; absence means not suspended."""

    def __init__(self, client: redis.Redis, prefix: str = "sw") -> None:
        self._client = client
        self._prefix = prefix

    def key(self, account_id: str) -> str:
        return account_key(self._prefix, account_id, "suspended")

    def get(self, account_id: str) -> Suspension | None:
        with redis_errors("reading the suspension of " + account_id):
            raw = typing.cast(bytes | None, self._client.get(self.key(account_id)))
        return parse_suspension(raw) if raw else None

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        value = json.dumps(
            {"reason": suspension.reason, "since": suspension.since, "by": suspension.by}
        )
        with redis_errors("suspending " + account_id):
            self._client.set(self.key(account_id), value)

    def lift(self, account_id: str) -> bool:
        with redis_errors("lifting the suspension of " + account_id):
            return bool(self._client.delete(self.key(account_id)))


def parse_suspension(raw: bytes | str) -> Suspension:
    """Read a stored suspension; an unreadable value still suspends (fail closed)."""
    try:
        data = json.loads(raw)
        return Suspension(
            reason=str(data["reason"]), since=str(data["since"]), by=str(data.get("by", ""))
        )
    except (ValueError, KeyError, TypeError):
        return Suspension(reason="suspended (record unreadable)", since="unknown")


class CachedSuspensions:
    """A :class:`SuspensionStore` that remembers "not suspended" for ``ttl`` seconds,
    so the MAIL-time check costs no round trip right after the rate limit's MAIL
    reservation read the same key (and refused the account if it was suspended).

    Never the last word: every reservation script refuses a suspended account
    whatever this cache says, and every reservation's answer refreshes it.
    "Suspended" is never cached, so a lifted suspension takes effect at once.
    """

    def __init__(
        self, store: SuspensionStore, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._clear_until: dict[str, float] = {}

    def get(self, account_id: str) -> Suspension | None:
        if self._clear_until.get(account_id, 0.0) > self._clock():
            return None
        suspension = self._store.get(account_id)
        if suspension is None:
            self.seen_unsuspended(account_id)
        else:
            self._clear_until.pop(account_id, None)
        return suspension

    def seen_unsuspended(self, account_id: str) -> None:
        """A store answer just now said the account is not suspended."""
        if len(self._clear_until) >= MAX_CACHED:
            self._clear_until.clear()  # bounded; account ids come from the config
        self._clear_until[account_id] = self._clock() + self._ttl

    def seen_suspended(self, account_id: str) -> None:
        self._clear_until.pop(account_id, None)

    def suspend(self, account_id: str, suspension: Suspension) -> None:
        self._clear_until.pop(account_id, None)
        self._store.suspend(account_id, suspension)

    def lift(self, account_id: str) -> bool:
        return self._store.lift(account_id)

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if callable(close):
            close()
