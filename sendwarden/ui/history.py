"""Suspensions as support staff change them, with their history (who, when, why,
lifted by whom). The current suspension lives in the suspension store the milter
reads; each change is also appended to a per-account log in Redis (newest first,
the last 100 kept), which is what the page shows as history."""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from sendwarden.policy.suspension import Suspension
from sendwarden.store.redis import account_key, redis_errors
from sendwarden.store.suspensions import SuspensionStore

KEEP = 100


@dataclass(frozen=True)
class Change:
    action: str  # "suspended" or "lifted"
    at: str  # ISO 8601 UTC
    by: str
    reason: str


def utc_now() -> datetime:
    return datetime.now(UTC)


class SuspensionDesk:
    """Suspend and lift with a reason and the staff member's name, and read the history."""

    def __init__(
        self,
        store: SuspensionStore,
        client: redis.Redis,
        prefix: str = "sw",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def _now(self) -> str:
        return self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _key(self, account_id: str) -> str:
        return account_key(self._prefix, account_id, "suspension-log")

    def suspend(self, account_id: str, reason: str, by: str) -> None:
        at = self._now()
        self.store.suspend(account_id, Suspension(reason=reason, since=at, by=by))
        self._log(account_id, Change("suspended", at, by, reason))

    def lift(self, account_id: str, reason: str, by: str) -> bool:
        lifted = self.store.lift(account_id)
        if lifted:
            self._log(account_id, Change("lifted", self._now(), by, reason))
        return lifted

    def history(self, account_id: str) -> list[Change]:
        with redis_errors(f"reading the suspension history of {account_id}"):
            raw = typing.cast(list[bytes], self._client.lrange(self._key(account_id), 0, KEEP))
        changes = []
        for item in raw:
            try:
                data = json.loads(item)
                changes.append(Change(data["action"], data["at"], data["by"], data["reason"]))
            except (ValueError, KeyError, TypeError):
                continue
        return changes

    def _log(self, account_id: str, change: Change) -> None:
        entry = json.dumps(change.__dict__)
        with redis_errors(f"recording the suspension history of {account_id}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.lpush(self._key(account_id), entry)
            pipe.ltrim(self._key(account_id), 0, KEEP - 1)
            pipe.execute()
