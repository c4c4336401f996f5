"""How many different recipients an account wrote to in the rolling hour.

A campaign split into many small messages never trips the per-message
recipient threshold; this counter catches it. One HyperLogLog per account and
minute (``prefix:{account}:rcpt-hll:MINUTE``): counting is one ``PFCOUNT`` over
the last 60 keys (one round trip; they share the account's hash tag, so it runs
on Redis Cluster), recording an accepted message is one ``PFADD`` + ``EXPIRE``.

HyperLogLog is an estimate (standard error 0.81 %, exact enough for "about 200
recipients"); in exchange an account's hour costs a few bytes per recipient,
not one set entry per address. The minute is taken from the local clock: MTA
hosts whose clocks differ by seconds shift the window's edge by as much, which
a one-minute bucket does not notice.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Sequence
from typing import Protocol

import redis

from sendwarden.addresses import normalise_address
from sendwarden.ratelimit.counter import RecentBatch
from sendwarden.store.redis import account_key, redis_errors

WINDOW_MINUTES = 60
# Buckets outlive the window by a little, so a bucket is never read after it expired
# early; Redis frees them on its own.
BUCKET_TTL_SECONDS = (WINDOW_MINUTES + 2) * 60


class RecipientCounter(Protocol):
    def count(self, account_id: str) -> int: ...
    def add(self, account_id: str, recipients: Sequence[str]) -> None: ...


class RecentRecipients:
    """Distinct recipients per account in the last hour, shared by all MTA hosts."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sw", clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def bucket_keys(self, account_id: str) -> list[str]:
        """The keys of the rolling hour, newest minute first."""
        minute = int(self._clock() // 60)
        stem = account_key(self._prefix, account_id, "rcpt-hll:")
        return [f"{stem}{minute - age}" for age in range(WINDOW_MINUTES)]

    def batch(self, account_id: str, recipients: Sequence[str]) -> RecentBatch:
        """The same count and record, for another round trip to carry (the rate
        limit's end-of-message script): see :meth:`count` and :meth:`add`."""
        addresses = [normalise_address(recipient) for recipient in recipients]
        return RecentBatch(self.bucket_keys(account_id), addresses, BUCKET_TTL_SECONDS)

    def count(self, account_id: str) -> int:
        """About how many different recipients the account wrote to this past hour."""
        with redis_errors(f"counting the recent recipients of {account_id}"):
            return typing.cast(int, self._client.pfcount(*self.bucket_keys(account_id)))

    def add(self, account_id: str, recipients: Sequence[str]) -> None:
        """Record the recipients of an accepted message (one round trip)."""
        if not recipients:
            return
        key = self.bucket_keys(account_id)[0]
        with redis_errors(f"recording the recent recipients of {account_id}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.pfadd(key, *(normalise_address(recipient) for recipient in recipients))
            pipe.expire(key, BUCKET_TTL_SECONDS)
            pipe.execute()
