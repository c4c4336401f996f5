"""sendwarden's CPU per message, in process, without an MTA.

    .venv/bin/python -m loadtest.milter_cpu [--messages 2000] [--recipients 1] [--profile]
    .venv/bin/python -m loadtest.milter_cpu --between python   # caches disturbed between messages

Drives one :class:`sendwarden.session.PolicySession` per message the way the milter
adapter does (MAIL, RCPTs, Postfix's Received header and the message's own headers,
the body, end of message) with ``loadtest.milter``'s configuration (every rule on,
1,000 accounts logging in, a DKIM key per domain) and its messages, against a
private Redis. Prints the process CPU per message (``time.process_time``) and the
Redis server's CPU per message (``INFO cpu``), and with ``--profile`` the cProfile
functions that cost most. Cheaper than ``loadtest.milter`` and free of MTA noise:
for finding and checking CPU cuts; the whole-system figures come from there.

``--between`` shows why the two differ: in a tight loop each message finds the
interpreter's code and data in the CPU caches; in the real milter the MTA, the client
and Redis run between two callbacks. It runs something else between messages (``data``:
copy 48 MB; ``python``: build and sort a 20,000-entry dict; ``sleep``: 2 ms idle) and
prints the thread CPU of the messages alone, beside the same without it.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from redis import Redis

from loadtest.milter import message_maker, sendwarden_config
from sendwarden.addresses import strip_brackets
from sendwarden.config import load_settings
from sendwarden.dkim import signer
from sendwarden.dkim.keys import generate_key
from sendwarden.milter.server import tune_garbage_collector
from sendwarden.policy.facts import Client
from sendwarden.runtime import Runtime, build_runtime
from sendwarden.session import PolicySession
from sendwarden.store.redis import DirectCalls
from tests.support.redis_server import RedisServer


def redis_cpu(observer: Redis) -> float:
    stats = observer.info("cpu")
    return float(stats["used_cpu_sys"]) + float(stats["used_cpu_user"])


def send(session: PolicySession, number: int, recipients: int, offset: int) -> None:
    """One message through the session, as the adapter's callbacks would pass it."""
    message = message_maker(recipients, offset)(number)
    queue_id = f"4Q{number:08X}"
    session.mail(f"<{message.mail_from}>", login=message.login, queue_id="")
    for recipient in message.recipients:
        session.rcpt(strip_brackets(f"<{recipient}>"), queue_id)
    head, _, body = message.data.partition(b"\r\n\r\n")
    session.header(
        "Received",
        "from client.example (client.example [192.0.2.10])\n\t(Authenticated sender: "
        f"{message.login})\n\tby mx.hosting.example (Postfix) with ESMTPSA id {queue_id}\n\t"
        f"for <{message.recipients[0]}>; Tue,  1 Dec 2026 18:00:00 +0000 (UTC)",
    )
    for line in head.decode().split("\r\n"):
        name, _, value = line.partition(":")
        session.header(name, value.lstrip(" "))
    session.body(body)
    verdict, _ = session.eom(queue_id=queue_id)
    if verdict.is_final and verdict.action.value != "accept":
        raise SystemExit(f"message {number} refused: {verdict}")


_POLLUTION = bytearray(48 * 1024 * 1024)
_VALUES = [float(n) for n in range(20_000)]


def disturb(kind: str) -> None:
    """What runs between two messages (see ``--between``)."""
    if kind == "data":
        bytes(_POLLUTION)
    elif kind == "python":
        table = {str(n): value * 2 for n, value in enumerate(_VALUES)}
        sorted(table.items())
    elif kind == "sleep":
        time.sleep(0.002)


def between(runtime: Runtime, client: Client, kind: str, first: int, messages: int) -> None:
    """Thread CPU per message, alternating 100-message blocks with and without
    ``kind`` run between messages (the disturbance itself is not counted)."""
    spent: dict[str, list[float]] = {"none": [], kind: []}
    number = first
    for block in range(max(1, messages // 100)):
        label = kind if block % 2 else "none"
        for _ in range(100):
            disturb(label)
            started = time.thread_time()
            send(PolicySession(runtime.pipeline, client), number, 1, 0)
            spent[label].append(time.thread_time() - started)
            number += 1
    for label, values in spent.items():
        values.sort()
        print(
            f"between messages: {label:7} CPU per message median "
            f"{values[len(values) // 2] * 1000:.3f} ms, mean "
            f"{sum(values) * 1000 / max(1, len(values)):.3f} ms ({len(values)} messages)"
        )


HOOKS = ("at_mail", "at_rcpt", "at_header", "at_body", "at_eom", "after_verdict")


class Breakdown:
    """CPU (this thread's) spent in each check's hooks, in the Redis round trips
    (client and wait: the thread sleeps while Redis works, so mostly the client's
    own CPU) and in the RSA signature; the rest of the total is the pipeline, the
    session and the driver."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._signer: signer.DkimSigner | None = None

    def wrap(self, owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)
        spent = self.spent
        spent.setdefault(label, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - started

        setattr(owner, attribute, timed)

    def install(self, runtime: Runtime) -> None:
        for check in runtime.pipeline.checks:
            for hook in HOOKS:
                self.wrap(check, hook, f"check {check.name}")
        self.wrap(DirectCalls, "__call__", "within the checks: Redis client, all calls")
        self.wrap(signer, "dkim_signature", "within dkim-sign: header and RSA signature")
        self._signer = next(c for c in runtime.pipeline.checks if isinstance(c, signer.DkimSigner))

    def print(self, messages: int, total: float) -> None:
        print("CPU per message by part (ms of this thread's CPU):")
        checks = sum(v for k, v in self.spent.items() if k.startswith("check "))
        for label, seconds in self.spent.items():
            print(f"  {label:50} {seconds * 1000 / messages:7.3f}")
        assert self._signer is not None
        key = next(iter(self._signer._keys.values())).signing_key
        started = time.thread_time()
        for _ in range(200):
            key.sign(b"\0" * 32, PKCS1v15(), Prehashed(SHA256()))
        rsa = (time.thread_time() - started) / 200
        print(f"  {'within that: the RSA-2048 signature alone':50} {rsa * 1000:7.3f}")
        rest = total - checks
        print(f"  {'pipeline, session, driver (the rest)':50} {rest * 1000 / messages:7.3f}")
        print(f"  {'total':50} {total * 1000 / messages:7.3f}")


def measured(
    args: argparse.Namespace, runtime: Runtime, client: Client, observer: Redis, warm: int
) -> None:
    """The process's CPU per message over ``args.messages`` (threads, breakdown, profile)."""
    breakdown = Breakdown() if args.breakdown else None
    if breakdown is not None:
        breakdown.install(runtime)
    profiler = cProfile.Profile() if args.profile else None
    redis_before = redis_cpu(observer)
    started, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    numbers = iter(range(warm, warm + args.messages))

    def sender() -> None:
        for number in numbers:  # shared: each message sent once
            send(PolicySession(runtime.pipeline, client), number, args.recipients, 0)

    workers = [threading.Thread(target=sender) for _ in range(args.threads - 1)]
    for worker in workers:
        worker.start()
    sender()  # here too: cProfile sees this thread only
    for worker in workers:
        worker.join()
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - started
    wall = time.perf_counter() - wall
    server = redis_cpu(observer) - redis_before
    print(
        f"{args.messages} messages, {args.recipients} recipient(s): "
        f"sendwarden CPU {cpu * 1000 / args.messages:.3f} ms/msg, "
        f"Redis server CPU {server * 1000 / args.messages:.3f} ms/msg, "
        f"wall {wall * 1000 / args.messages:.3f} ms/msg"
        + (" (under cProfile)" if profiler else ""),
        flush=True,
    )
    if breakdown is not None:
        breakdown.print(args.messages, cpu)
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured run")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU per check, Redis client and RSA (1 thread)"
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=1000,
        help="messages sent first, unmeasured (1000: every account once, its caches warm)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="send from this many threads at once (GIL)"
    )
    parser.add_argument(
        "--between",
        choices=("data", "python", "sleep"),
        help="run this between messages and compare (1 thread, 1 recipient)",
    )
    args = parser.parse_args(list(argv))
    client = Client(
        address=ipaddress.ip_address("192.0.2.10"), hostname="client.example", port=40000
    )
    with tempfile.TemporaryDirectory(prefix="sw-cpu-") as name:
        directory = Path(name)
        key_file = directory / "dkim.key"
        generate_key(key_file)
        redis = RedisServer()
        redis.start()
        try:
            config = sendwarden_config(directory, "unix:/nonexistent.sock", redis.url, key_file)
            runtime = build_runtime(load_settings(config))
            tune_garbage_collector()  # as the milter does once started
            observer = Redis.from_url(redis.url)
            warm = args.warm
            for number in range(warm):  # every account once: imports, caches
                send(PolicySession(runtime.pipeline, client), number, args.recipients, 0)
            if args.between:
                between(runtime, client, args.between, warm, args.messages)
            else:
                measured(args, runtime, client, observer, warm)
            observer.close()
            runtime.close()
        finally:
            redis.close()


if __name__ == "__main__":
    main(sys.argv[1:])
