"""Which accounts are suspended, shared by every MTA host through Redis."""

from __future__ import annotations

import json
import typing
from typing import Protocol

import redis

from sendwarden.policy.suspension import Suspension
from sendwarden.store.redis import account_key, redis_errors


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
