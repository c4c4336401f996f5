"""What monitor-only mode let pass, counted in Redis for ``sendwarden report``.

Why Redis counters and not the decision log: the log lines are spread over every
MTA host's journal, rotated and rate-limited by journald, and a report would have to
collect and parse them from each host; Redis is already shared by every host and is
where the other per-account counters live. A count costs one round trip per
*watched refusal* only (not per message), and a day of counts is a few small hashes.

Layout: one hash per UTC hour, ``PREFIX:monitor:HOUR`` (HOUR = epoch seconds // 3600),
fields ``account<TAB>rule``, kept for two days. Hour buckets use the MTA host's clock
(an hour's edge a few seconds off moves a count one bucket, not out of the day).
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

import redis

from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict
from sendwarden.store import StoreError, StoreHealth
from sendwarden.store.redis import redis_errors

log = logging.getLogger(__name__)

HOUR = 3600
KEEP_SECONDS = 2 * 86400
NO_ACCOUNT = "(no account)"


@dataclass(frozen=True)
class MonitorCount:
    account: str
    rule: str
    count: int


class MonitorStore:
    """Would-be refusals per account and rule in hourly buckets (see the module doc)."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sw", clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def key(self, hour: int) -> str:
        return f"{self._prefix}:monitor:{hour}"

    def record(self, account_id: str, rule: str, count: int = 1) -> None:
        key = self.key(int(self._clock()) // HOUR)
        with redis_errors("counting a monitored refusal"):
            pipe = self._client.pipeline(transaction=False)
            pipe.hincrby(key, f"{account_id}\t{rule}", count)
            pipe.expire(key, KEEP_SECONDS)
            pipe.execute()

    def summary(self, hours: int = 24) -> list[MonitorCount]:
        """Counts over the last ``hours`` hours (the current one included), most first."""
        now_hour = int(self._clock()) // HOUR
        with redis_errors("reading the monitored refusals"):
            pipe = self._client.pipeline(transaction=False)
            for hour in range(now_hour - hours + 1, now_hour + 1):
                pipe.hgetall(self.key(hour))
            replies = pipe.execute()
        totals: dict[tuple[str, str], int] = {}
        for fields in replies:
            for name, value in typing.cast(dict[bytes, bytes], fields).items():
                account, _, rule = name.decode(errors="replace").partition("\t")
                totals[(account, rule)] = totals.get((account, rule), 0) + int(value)
        counts = [MonitorCount(a, r, n) for (a, r), n in totals.items() if n > 0]
        return sorted(counts, key=lambda c: (-c.count, c.account, c.rule))


class MonitorRecorder:
    """Pipeline observer: counts every refusal monitor-only mode let pass."""

    def __init__(self, store: MonitorStore) -> None:
        self._store = store
        self._outage = StoreHealth(log, "monitored refusals are not counted until it is back")

    def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        """Real decisions are not this recorder's business."""

    def observe_monitored(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        try:
            self._store.record(txn.account_id or NO_ACCOUNT, verdict.rule)
        except StoreError as error:
            self._outage.failed(error)
            return
        self._outage.succeeded({"redis"})
