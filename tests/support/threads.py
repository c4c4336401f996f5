"""Threads started together on shared work, for the concurrency tests and the
benchmarks: a timed throughput run, and a race of fixed work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Called with the operations a thread has done so far: does some more, returns how many.
Step = Callable[[int], int]


def throughput(worker: Callable[[int], Step], threads: int, seconds: float) -> float:
    """Operations per second from ``threads`` threads working for ``seconds``.

    ``worker(index)`` prepares thread ``index`` (untimed) and returns its step, which
    the thread calls until the time is up. The threads start together (a barrier).
    """
    counts = [0] * threads
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        step = worker(index)
        ready.wait()
        done = 0
        while not stop.is_set():
            done += step(done)
        counts[index] = done

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def race(work: Callable[[int], int], threads: int) -> int:
    """Run ``work(index)`` on ``threads`` threads released together (a barrier); the
    sum of what they return."""
    results = [0] * threads
    ready = threading.Barrier(threads)

    def run(index: int) -> None:
        ready.wait()
        results[index] = work(index)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(results)
