"""The per-account recipient counter in Redis: one EVALSHA per decision.

Every MTA host sharing the Redis shares the counts. The script takes the time
itself (``TIME``), so hosts need no synchronised clocks; tests may inject a clock
instead. An account's keys share one hash tag (``prefix:{account}:...``), so the
script runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import string
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from sendwarden import metrics
from sendwarden.config import Settings
from sendwarden.policy.suspension import RATE_LIMIT_SUSPENDER
from sendwarden.ratelimit.window import (
    BUCKET_SECONDS,
    MICROSECONDS,
    WINDOW_SECONDS,
    bucket_expiry,
    live_buckets,
)
from sendwarden.store import StoreError, answered
from sendwarden.store.redis import DirectCalls, account_key, redis_errors

Clock = Callable[[], int]  # microseconds since the epoch

#: How long a reservation's record (what lets a refund give it back, once) is kept:
#: longer than any SMTP transaction and any refund owed across a Redis outage.
#: A refund that comes later gives nothing back: the count stays high, never low.
RECORD_SECONDS = 900

#: The bucket of a reservation whose answer never came (Redis timed out): it may
#: have been counted, may be counted later, or never; a refund finds it wherever it is.
UNKNOWN_BUCKET = -1


class ReservationIds:
    """Unique reservation ids, cheaply: a random per-process prefix and a counter
    (ids must never repeat across MTA hosts and restarts within an hour)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._next = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}.{next(self._next)}"


new_reservation_id = ReservationIds()


def load_script(name: str, package: str | None = __package__) -> str:
    """A Lua script shipped as package data (next to this module by default)."""
    assert package is not None
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def templated_script(
    name: str, constants: Mapping[str, object], package: str | None = __package__
) -> str:
    """A package Lua script with ``constants`` written in at load time (``$window``...)
    and the shared functions ``$script_time`` (script_time.lua) and
    ``$count_reservation`` (count_reservation.lua)."""
    return string.Template(load_script(name, package)).substitute(
        constants,
        script_time=load_script("script_time.lua"),
        count_reservation=load_script("count_reservation.lua"),
    )


def lua_string(text: str) -> str:
    """A Lua string literal for ``text``: plain ASCII as is, every other byte as a
    three-digit decimal escape (so no quote, backslash or newline can end it)."""
    plain = frozenset(
        b" .,:;-_@()/" + bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123))
    )
    return (
        '"'
        + "".join(chr(byte) if byte in plain else f"\\{byte:03d}" for byte in text.encode())
        + '"'
    )


class LuaScript:
    """A package Lua script called by EVALSHA: one round trip, and after a Redis
    restart (script cache empty) it is loaded again once. ``direct``: send it through
    redis-py's connection API (:class:`DirectCalls`), not the client's."""

    def __init__(self, client: redis.Redis, source: str, direct: DirectCalls | None = None) -> None:
        self._client = client
        self._direct = direct
        self.source = source
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    def __call__(self, keys: list[str], *args: EncodableT) -> Any:
        try:
            return self._evalsha(keys, args)
        except NoScriptError:
            self.sha = str(self._client.script_load(self.source))
            return self._evalsha(keys, args)

    def _evalsha(self, keys: list[str], args: tuple[EncodableT, ...]) -> Any:
        if self._direct is not None:
            return self._direct("EVALSHA", self.sha, len(keys), *keys, *args)
        return self._client.evalsha(self.sha, len(keys), *keys, *args)


class Decision(NamedTuple):
    """The answer to one reservation (a NamedTuple: built on every RCPT, cheaply)."""

    admitted: bool
    used: int  # recipients in the window (including this reservation when admitted)
    limit: int
    bucket: int  # where an admitted reservation landed; refund exactly there
    frees_at: int | None  # refused: epoch second when the cost fits again; None = never
    now: float  # the counter's time, epoch seconds
    suspended: bool = False  # this refusal suspended the account
    reservation: str = ""  # the id to refund it by
    granted: int = 0  # admitted: recipients reserved (from cost up to the batch asked for)
    suspension: bytes = b""  # refused because the account is suspended: its JSON


@dataclass(frozen=True, slots=True)
class RecentBatch:
    """The distinct-recipient counter's part of the end-of-message round trip (the
    consent rule's HyperLogLogs: see :mod:`sendwarden.consent.bulk`)."""

    keys: Sequence[str]  # newest first
    add: Sequence[str]  # recipients to record in keys[0]
    ttl: int  # seconds keys[0] lives
    count: bool = True  # return the distinct count before adding


class Settlement(NamedTuple):
    """The answer of the end-of-message round trip (:meth:`RecipientCounter.settle`)."""

    given: int  # batch recipients given back
    distinct: int  # the account's distinct recipients before this message (when asked)
    admitted: bool = True  # the provisional recipients were counted (or there were none)
    bucket: int = 0  # where they were counted: a refund gives them back there
    used: int = -1  # the window's count after it all (-1: not read)
    suspension: bytes = b""  # the suspension that refused them (the account's JSON)


@dataclass(frozen=True, slots=True)
class Usage:
    """An account's window as ``sendwarden ratelimit status`` shows it."""

    used: int
    now: float
    next_free_at: int | None  # epoch second when the oldest counted recipients expire
    all_free_at: int | None  # epoch second when the window is empty
    strikes: int  # over-limit episodes within the suspension period


#: Who an automatic suspension is recorded as having been made by.
# Who automatic suspensions name as their author; the reply quotes only their reason.
AUTOMATIC_BY = RATE_LIMIT_SUSPENDER


@dataclass(frozen=True, slots=True)
class SuspensionPolicy:
    """Automatic suspension: ``after`` over-limit episodes within ``period`` seconds
    (``after`` 0 disables it)."""

    after: int = 0
    period: int = 86400
    by: str = AUTOMATIC_BY


class RecipientCounter:
    """Reserve, refund and inspect recipients per account. Thread-safe (the redis
    client pools connections); raises StoreError when Redis does not answer."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "sw",
        *,
        suspension: SuspensionPolicy | None = None,
        clock: Clock | None = None,
        window_seconds: int = WINDOW_SECONDS,
        bucket_seconds: int = BUCKET_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._suspension = suspension or SuspensionPolicy()
        self._clock = clock
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        constants = {
            "window": window_seconds,
            "bucket": bucket_seconds,
            "record_ttl": RECORD_SECONDS,
            "suspend_after": self._suspension.after,
            "suspend_period": self._suspension.period,
            "by": lua_string(self._suspension.by),
        }
        # The two scripts of every message (and the refund of a refused one) skip the
        # client's per-call work; the others are for the CLI.
        self._direct = DirectCalls.for_client(client)
        self._reserve = LuaScript(client, templated_script("reserve.lua", constants), self._direct)
        self._refund = LuaScript(client, templated_script("refund.lua", constants), self._direct)
        self._reset = LuaScript(client, templated_script("reset.lua", constants))
        self._settle = LuaScript(client, templated_script("settle.lua", constants), self._direct)
        self._usage = LuaScript(client, load_script("usage.lua"))
        self._keys: dict[str, list[str]] = {}

    def close(self) -> None:
        """Nothing to close: the per-message scripts' connections belong with the
        client (a reload may hand it on), closed by its owner (``close_client``)."""

    def keys(self, account_id: str) -> list[str]:
        """The account's rate hash, strike set, suspension key, void hash and the base
        name of its per-bucket reservation records (one hash tag)."""
        keys = self._keys.get(account_id)
        if keys is None:
            keys = [
                account_key(self._prefix, account_id, name)
                for name in ("rate", "strikes", "suspended", "void", "res")
            ]
            if len(self._keys) < 100_000:  # bounded: account ids come from the config
                self._keys[account_id] = keys
        return keys

    def reserve(
        self,
        account_id: str,
        cost: int,
        limit: int,
        suspension_reason: str = "",
        reservation: str = "",
        want: int = 0,
        watch_only: bool = False,
    ) -> Decision:
        """Count ``cost`` recipients if they fit under ``limit`` in the rolling window,
        atomically; otherwise count nothing (and maybe suspend the account, unless
        ``watch_only``: monitor-only mode strikes and suspends nobody). A suspended
        account is refused whatever its count (``Decision.suspension``).

        ``want`` > ``cost`` reserves a batch: up to ``want`` when that many fit, at
        least ``cost`` (``Decision.granted``); what the transaction does not use is
        given back by :meth:`settle`.

        ``reservation`` (a fresh id when empty) makes the write idempotent: Redis
        counts an id once, and not at all once it has been refunded. A caller that
        times out should refund the id with bucket ``UNKNOWN_BUCKET``."""
        keys = self._keys.get(account_id) or self.keys(account_id)
        now = self._clock() if self._clock else ""
        reservation = reservation or new_reservation_id()
        recorder = metrics.current()
        started = time.perf_counter() if recorder is not None else 0.0
        try:  # not redis_errors(): a context manager costs more than the rest of this method
            reply = self._reserve(
                keys,
                cost,
                limit,
                suspension_reason,
                now,
                reservation,
                max(want, cost),
                "1" if watch_only else "",
            )
        except redis.RedisError as error:
            if recorder is not None:
                recorder.store_done("redis", time.perf_counter() - started, True)
            raise StoreError(
                "redis", f"counting recipients of account {account_id}: {error}"
            ) from error
        answered("redis")
        if recorder is not None:
            recorder.store_done("redis", time.perf_counter() - started, False)
        admitted, used, bucket, free, script_now, suspended, granted, suspension = reply
        return Decision(
            admitted == 1,
            used,
            limit,
            bucket,
            None if free < 0 else free,
            script_now / MICROSECONDS,
            suspended == 1,
            reservation,
            granted,
            suspension,
        )

    def settle(
        self,
        account_id: str,
        reservation: tuple[str, int, int] | None,
        recent: RecentBatch | None = None,
        extra: tuple[str, int, int] | None = None,
        fill: int = 0,
    ) -> Settlement:
        """End of message in one round trip: ``reservation`` ``(id, bucket, keep)``
        keeps only ``keep`` of what it reserved (the rest is given back); ``extra``
        ``(id, count, limit)`` reserves ``count`` recipients accepted provisionally,
        all or none (none when they no longer fit under ``limit`` or the account is
        suspended: ``Settlement.admitted`` is False and the message must be deferred);
        ``fill`` > 0 caches "not suspended" for that many seconds if Redis has no entry
        for the account; ``recent`` counts, then records, the message's distinct
        recipients (not when the extra was refused). Safe to repeat."""
        rate_key, _, suspended_key, void_key, records = self.keys(account_id)
        keys = [rate_key, records, suspended_key, void_key, *(recent.keys if recent else ())]
        reservation_id, bucket, keep = reservation or ("", 0, 0)
        extra_id, count, limit = extra or ("", 0, 0)
        args: list[EncodableT] = [
            reservation_id, bucket, keep, extra_id, count, limit,
            (self._clock() if self._clock else "") if extra_id else "",
            fill or "",
        ]  # fmt: skip
        if recent is not None:
            args += ["1" if recent.count else "0", recent.ttl, *recent.add]
        with redis_errors(f"settling the recipients of account {account_id}"):
            reply = typing.cast(list[Any], self._settle(keys, *args))
        given, distinct, admitted, extra_bucket, used, suspension = reply
        return Settlement(
            int(given), int(distinct), admitted == 1, int(extra_bucket), int(used), suspension
        )

    def refund(self, account_id: str, reservations: Mapping[str, int]) -> int:
        """Give back reservations ``{id: bucket}`` (``UNKNOWN_BUCKET`` when the
        reservation's answer never came); returns how many recipients were returned
        (fewer when a bucket has already left the window, none for an id already
        refunded or never counted). Safe to repeat: each id is given back once."""
        if not reservations:
            return 0
        args: list[EncodableT] = [self._clock() if self._clock else ""]
        for reservation, bucket in reservations.items():
            args += (reservation, bucket)
        rate_key, _, _, void_key, records = self.keys(account_id)
        with redis_errors(f"returning recipients of account {account_id}"):
            return int(self._refund([rate_key, void_key, records], *args))

    def usage(self, account_id: str) -> Usage:
        """Read the account's window without changing it."""
        rate_key, strikes_key = self.keys(account_id)[:2]
        with redis_errors(f"reading the recipient count of account {account_id}"):
            reply = self._usage([rate_key, strikes_key])
        seconds, micros, fields, strike_fields = typing.cast(list[typing.Any], reply)
        now_us = self._clock() if self._clock else int(seconds) * MICROSECONDS + int(micros)
        buckets = {
            int(fields[i]): int(fields[i + 1])
            for i in range(0, len(fields), 2)
            if fields[i].isdigit()
        }
        strike_times = [float(strike_fields[i + 1]) for i in range(0, len(strike_fields), 2)]
        live = live_buckets(buckets, now_us, self.window_seconds, self.bucket_seconds)
        used = sum(live.values())
        return Usage(
            used=used,
            now=now_us / MICROSECONDS,
            next_free_at=(
                bucket_expiry(min(live), self.window_seconds, self.bucket_seconds) if live else None
            ),
            all_free_at=(
                bucket_expiry(max(live), self.window_seconds, self.bucket_seconds) if live else None
            ),
            strikes=sum(
                1 for at in strike_times if at > now_us - self._suspension.period * MICROSECONDS
            ),
        )

    def reset(self, account_id: str) -> bool:
        """Forget the account's counts and strikes (not a suspension: staff lift that),
        and its reservation records, so no earlier refund takes from later counts."""
        rate_key, strikes_key, _, void_key, records = self.keys(account_id)
        now = self._clock() if self._clock else ""
        with redis_errors(f"resetting the recipient count of account {account_id}"):
            return bool(self._reset([rate_key, strikes_key, void_key, records], now))


__all__ = [
    "UNKNOWN_BUCKET",
    "Clock",
    "Decision",
    "RecentBatch",
    "RecipientCounter",
    "Settlement",
    "SuspensionPolicy",
    "Usage",
    "counter_from_settings",
]


def counter_from_settings(settings: Settings, client: redis.Redis) -> RecipientCounter:
    """The counter as the milter and the CLI use it, from the configuration."""
    return RecipientCounter(
        client,
        settings.redis.key_prefix,
        suspension=SuspensionPolicy(
            after=settings.ratelimit.suspend_after, period=settings.ratelimit.suspend_period
        ),
    )
