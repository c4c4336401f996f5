"""Many MTA connections racing on one account never get more than the limit:
threads sharing one client, and two processes with their own clients, against
one real Redis."""

from __future__ import annotations

import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor

import redis

from sendwarden.config import RedisSettings
from sendwarden.ratelimit import RecipientCounter
from sendwarden.store.redis import connect
from tests.support.redis_server import RedisServer
from tests.support.threads import race

LIMIT = 300


def hammer(
    url: str, account: str, threads: int, attempts: int, seed: int, processes: int = 1
) -> int:
    """Reserve from ``threads`` threads until each made ``attempts`` tries; the
    recipients admitted in total. Runs in the test process or a child process; every
    thread of the ``processes`` starts together (a barrier in Redis), so no process
    can use up the limit before the other's threads are running."""
    client = connect(RedisSettings(url=url, timeout_ms=5000))
    counter = RecipientCounter(client, "race")
    barrier = f"race:{{{account}}}:barrier"

    def work(index: int) -> int:
        client.incr(barrier)
        while int(client.get(barrier) or 0) < processes * threads:
            time.sleep(0.005)
        rng = random.Random(seed * 1000 + index)
        admitted = 0
        for _ in range(attempts):
            cost = rng.choice((1, 1, 1, 2, 5))
            if counter.reserve(account, cost, LIMIT).admitted:
                admitted += cost
        return admitted

    total = race(work, threads)
    client.close()
    return total


def window_count(url: str, account: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return RecipientCounter(client, "race").usage(account).used
    finally:
        client.close()


def test_threads_never_admit_more_than_the_limit(redis_server: RedisServer) -> None:
    admitted = hammer(redis_server.url, "threads", threads=16, attempts=40, seed=1)
    # 640 tries of cost >= 1 against 300: the limit is reached, never passed. The
    # last few units may stay unused when only a cost-5 try came after them.
    assert LIMIT - 4 <= admitted <= LIMIT
    assert window_count(redis_server.url, "threads") == admitted


def test_two_processes_never_admit_more_than_the_limit(redis_server: RedisServer) -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [
            pool.submit(hammer, redis_server.url, "processes", 8, 40, seed, 2) for seed in (2, 3)
        ]
        per_process = [future.result(timeout=120) for future in futures]
    assert all(count > 0 for count in per_process)
    admitted = sum(per_process)
    assert LIMIT - 4 <= admitted <= LIMIT
    assert window_count(redis_server.url, "processes") == admitted
