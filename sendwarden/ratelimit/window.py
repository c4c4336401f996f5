"""The sliding window's semantics as pure functions, the spec the Lua script follows.

The window is ``WINDOW_SECONDS`` long and is kept as counts per bucket of
``BUCKET_SECONDS`` (bucket number ``b = floor(t / BUCKET_SECONDS)``). At time ``now``
every bucket that overlaps ``(now - window, now]`` counts *whole*, including the
oldest, partly expired one. Hence:

* never over: at any admission time the true count in the rolling hour before it
  is at most the counted sum, so no rolling hour ever holds more than the limit;
* early by at most one bucket: the counted sum never exceeds the true count over
  the slightly longer span ``(now - window - bucket, now]``, so capacity comes back
  at most ``BUCKET_SECONDS`` later than an exact per-recipient log would give it.

Times are whole microseconds (what Redis ``TIME`` gives), so Python and Lua agree
to the last digit. :class:`BucketWindow` is a pure in-memory model of one account's
window with an injectable clock: the property tests' reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

WINDOW_SECONDS = 3600
BUCKET_SECONDS = 60
MICROSECONDS = 1_000_000


def bucket_of(now_us: int, bucket_seconds: int = BUCKET_SECONDS) -> int:
    """The bucket a reservation at ``now_us`` lands in."""
    return now_us // (bucket_seconds * MICROSECONDS)


def oldest_live_bucket(
    now_us: int, window_seconds: int = WINDOW_SECONDS, bucket_seconds: int = BUCKET_SECONDS
) -> int:
    """The oldest bucket still overlapping ``(now - window, now]``."""
    return (now_us - window_seconds * MICROSECONDS) // (bucket_seconds * MICROSECONDS)


def live_buckets(
    buckets: Mapping[int, int],
    now_us: int,
    window_seconds: int = WINDOW_SECONDS,
    bucket_seconds: int = BUCKET_SECONDS,
) -> dict[int, int]:
    """The buckets that still count at ``now_us``."""
    oldest = oldest_live_bucket(now_us, window_seconds, bucket_seconds)
    return {number: count for number, count in buckets.items() if number >= oldest}


def bucket_expiry(
    number: int, window_seconds: int = WINDOW_SECONDS, bucket_seconds: int = BUCKET_SECONDS
) -> int:
    """The epoch second from which bucket ``number`` no longer counts."""
    return (number + 1) * bucket_seconds + window_seconds


def frees_at(
    live: Mapping[int, int],
    used: int,
    cost: int,
    limit: int,
    window_seconds: int = WINDOW_SECONDS,
    bucket_seconds: int = BUCKET_SECONDS,
) -> int | None:
    """The epoch second from which ``cost`` more fit under ``limit``; None if they never
    can (``cost > limit``); 0 if they fit now."""
    if cost > limit:
        return None
    excess = used + cost - limit
    if excess <= 0:
        return 0
    for number in sorted(live):
        excess -= live[number]
        if excess <= 0:
            return bucket_expiry(number, window_seconds, bucket_seconds)
    return None  # only when the counts are inconsistent (negative); never for valid data


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    used: int
    bucket: int
    frees_at: int | None  # refused: epoch second when the cost fits again


@dataclass
class BucketWindow:
    """One account's window in memory: the reference model of the Lua script."""

    limit: int
    clock: Callable[[], int]  # microseconds since the epoch
    window_seconds: int = WINDOW_SECONDS
    bucket_seconds: int = BUCKET_SECONDS
    buckets: dict[int, int] = field(default_factory=dict)

    def used(self) -> int:
        return sum(self._live().values())

    def reserve(self, cost: int) -> Admission:
        now = self.clock()
        self.buckets = self._live(now)
        used = sum(self.buckets.values())
        current = bucket_of(now, self.bucket_seconds)
        if used + cost <= self.limit:
            self.buckets[current] = self.buckets.get(current, 0) + cost
            return Admission(True, used + cost, current, 0)
        when = frees_at(
            self.buckets, used, cost, self.limit, self.window_seconds, self.bucket_seconds
        )
        return Admission(False, used, current, when)

    def refund(self, bucket: int, cost: int) -> None:
        left = self.buckets.get(bucket, 0) - cost
        if left > 0:
            self.buckets[bucket] = left
        else:
            self.buckets.pop(bucket, None)

    def _live(self, now_us: int | None = None) -> dict[int, int]:
        now = self.clock() if now_us is None else now_us
        return live_buckets(self.buckets, now, self.window_seconds, self.bucket_seconds)
