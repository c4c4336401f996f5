"""Recipient counter benchmark: ``python -m loadtest.ratelimit``.

One run, one machine, one private Redis started here, three contenders doing the
same work at the same concurrency, interleaved in rounds so machine noise hits
them alike:

* ceiling: a bare EVALSHA of a one-line Lua script from the same redis-py client;
* sendwarden: ``RecipientCounter.reserve`` (the milter's RCPT path);
* limits: ``MovingWindowRateLimiter`` + ``RedisStorage`` with ``cost``, the moving
  window a Python user would pick.

Each thread spreads its decisions over 200 accounts of its own and one account all
threads share (every fourth decision), at 500 recipients per hour. Then an
exactness check (16 threads racing on one account, costs 1/1/2/5) and the Redis
memory per account at 500 recipients per hour (``MEMORY USAGE``).
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import redis
from limits import RateLimitItemPerHour
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from sendwarden.config import RedisSettings
from sendwarden.ratelimit import RecipientCounter
from sendwarden.ratelimit.window import MICROSECONDS
from sendwarden.store.redis import connect
from tests.support.redis_server import RedisServer
from tests.support.threads import Step, race, throughput

LIMIT = 500
CEILING_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
Decide = Callable[[str, int], bool]  # (account, cost) -> admitted


@dataclass
class Contender:
    name: str
    decide: Decide
    reset: Callable[[], None]


def contenders(url: str) -> list[Contender]:
    client = connect(RedisSettings(url=url, timeout_ms=5000))
    sha = client.script_load(CEILING_SCRIPT)

    def ceiling(account: str, cost: int) -> bool:
        return bool(client.evalsha(sha, 1, f"ceil:{{{account}}}", cost))

    counter = RecipientCounter(client, "bench")

    def sendwarden(account: str, cost: int) -> bool:
        return counter.reserve(account, cost, LIMIT).admitted

    storage = RedisStorage(url)
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerHour(LIMIT)

    def moving_window(account: str, cost: int) -> bool:
        return bool(limiter.hit(item, account, cost=cost))

    def flush() -> None:
        client.flushall()

    return [
        Contender("bare EVALSHA (ceiling)", ceiling, flush),
        Contender("sendwarden RecipientCounter", sendwarden, flush),
        Contender("limits MovingWindowRateLimiter", moving_window, flush),
    ]


def spread(decide: Decide) -> Callable[[int], Step]:
    """Threads deciding over 200 accounts of their own and, every fourth decision, the
    account all threads share; 50 decisions a step."""

    def worker(index: int) -> Step:
        own = [f"t{index}a{n}" for n in range(200)]
        rng = random.Random(index)

        def step(done: int) -> int:
            for number in range(done, done + 50):
                account = "shared" if number % 4 == 0 else own[rng.randrange(200)]
                decide(account, 1)
            return 50

        return step

    return worker


def exactness(decide: Decide, threads: int = 16, tries: int = 60) -> int:
    """Recipients admitted when ``threads`` race on one account with costs 1/2/5."""

    def work(index: int) -> int:
        rng = random.Random(100 + index)
        admitted = 0
        for _ in range(tries):
            cost = rng.choice((1, 1, 2, 5))
            if decide("race", cost):
                admitted += cost
        return admitted

    return race(work, threads)


class ManualClock:
    """Time for the memory measurement: 500 recipients spread over an hour, now."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def memory(url: str) -> dict[str, int]:
    """Bytes of Redis memory for one account at 500 recipients in the hour."""
    client = redis.Redis.from_url(url)
    client.flushall()
    result: dict[str, int] = {}
    start = 1_700_000_000 * MICROSECONDS
    for label, step_us in (("spread over the hour", 7_200_000), ("in one burst", 0)):
        clock = ManualClock(start)
        counter = RecipientCounter(client, label.replace(" ", "-"), clock=clock)
        for _ in range(LIMIT):
            counter.reserve("acme", 1, LIMIT)
            clock.now_us += step_us
        result[f"sendwarden, {label}"] = sum(
            client.memory_usage(key) or 0 for key in counter.keys("acme") if client.exists(key)
        )
    limiter = MovingWindowRateLimiter(RedisStorage(url))
    item = RateLimitItemPerHour(LIMIT)
    for _ in range(LIMIT):
        limiter.hit(item, "acme")
    result["limits moving window"] = sum(
        client.memory_usage(key) or 0 for key in client.scan_iter("LIMITS*")
    )
    client.close()
    return result


def run(seconds: float, rounds: int, concurrency: tuple[int, ...]) -> None:
    with RedisServer() as server:
        entries = contenders(server.url)
        for entry in entries:  # warm up: connections, script cache
            entry.decide("warmup", 1)
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for threads in concurrency:
                for entry in entries:
                    entry.reset()
                    rate = throughput(spread(entry.decide), threads, seconds)
                    rates.setdefault((entry.name, threads), []).append(rate)
        admitted: dict[str, int] = {}
        for entry in entries[1:]:
            entry.reset()
            admitted[entry.name] = exactness(entry.decide)
        bytes_per_account = memory(server.url)

    ceiling_name, ours_name, peer_name = (entry.name for entry in entries)
    print(
        f"\nRecipient counter: decisions/s (median of {rounds} interleaved rounds of {seconds:g} s)"
    )
    print(f"{'contender':34}" + "".join(f"{f'{t} thread(s)':>14}" for t in concurrency))
    for entry in entries:
        row = [statistics.median(rates[(entry.name, t)]) for t in concurrency]
        print(f"{entry.name:34}" + "".join(f"{rate:>14,.0f}" for rate in row))
    for label, numerator, denominator in (
        ("sendwarden / ceiling (goal >= 0.8)", ours_name, ceiling_name),
        ("sendwarden / limits (goal > 1)", ours_name, peer_name),
    ):
        # the median of per-round ratios: both sides of a ratio ran moments apart, so a
        # burst of load from elsewhere on the machine hits them alike
        ratios = [
            statistics.median(
                ours / theirs
                for ours, theirs in zip(rates[(numerator, t)], rates[(denominator, t)], strict=True)
            )
            for t in concurrency
        ]
        print(f"{label:34}" + "".join(f"{ratio:>14.2f}" for ratio in ratios))
    print(f"\nExactness: 16 threads race on one account, limit {LIMIT}, costs 1/1/2/5")
    for name, count in admitted.items():
        verdict = "OVER-ADMITTED" if count > LIMIT else "never over"
        print(f"{name:34}{count:>8} admitted   {verdict}")
    print(f"\nRedis memory per account at {LIMIT} recipients/hour (MEMORY USAGE)")
    for label, size in bytes_per_account.items():
        print(f"{label:34}{size:>8,} bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.4, help="per measurement")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved; medians shown")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    run(args.seconds, args.rounds, tuple(args.threads))


if __name__ == "__main__":
    main()
