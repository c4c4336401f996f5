"""Bulk-mail enforcement benchmark: ``python -m loadtest.bulk``.

One run, one machine, private servers started here (Redis, PostgreSQL; SQLite in a
temp file), contenders interleaved in rounds so machine noise hits them alike.

1. A 60-recipient bulk message, per ledger backend, on a ledger of ~24,000 events:
   * batched: one ``consenting()`` call for the 60 recipients (what the milter does);
   * per recipient: 60 ``consenting()`` calls of one recipient (the naive baseline);
   * milter check: ``ConsentCheck.at_eom`` on the message (headers, normalisation,
     the batched query), to show what the check adds to the query.
2. A personal message (2 recipients), the price every message pays: the check's
   end-of-message ``PFCOUNT`` and its ``PFADD`` after acceptance, against the ceiling
   of two bare ``PING`` round trips from the same client.
3. Redis memory for an account that wrote to 500 recipients in the hour: the
   per-minute HyperLogLogs, against an exact SET and a ZSET of the addresses.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

from sendwarden.config import RedisSettings, settings_from_mapping
from sendwarden.consent.bulk import RecentRecipients
from sendwarden.consent.check import ConsentCheck
from sendwarden.consent.model import ConsentStore, EventKind, NewEvent
from sendwarden.consent.store import open_consent_store
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import CONTINUE
from sendwarden.store.redis import connect
from tests.support.postgres import PostgresServer, find_bindir
from tests.support.redis_server import RedisServer
from tests.support.threads import Step, throughput

ACCOUNTS = ("acme", "globex", "initech", "umbrella")
SUBSCRIBERS = 5_000  # per account
MESSAGE_SIZE = 60
SETTINGS = settings_from_mapping(
    {"accounts": [{"id": account, "logins": [f"news@{account}.example"]} for account in ACCOUNTS]}
)
CLIENT = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=1)
Work = Callable[[int], None]  # one decision; the argument varies the message


def seed(store: ConsentStore) -> int:
    """Grants for every subscriber of every account, then a 10 % unsubscribe wave."""
    start = datetime(2025, 6, 1, tzinfo=UTC)
    events = [
        NewEvent(account, f"s{n}@list{n % 50}.example", EventKind.GRANTED,
                 start + timedelta(minutes=n), "bench", method="single-opt-in")
        for account in ACCOUNTS for n in range(SUBSCRIBERS)
    ]  # fmt: skip
    events += [
        NewEvent(account, f"s{n}@list{n % 50}.example", EventKind.REVOKED,
                 start + timedelta(days=200, minutes=n), "bench", method="unsubscribe-link")
        for account in ACCOUNTS for n in range(0, SUBSCRIBERS, 10)
    ]  # fmt: skip
    return store.append(events)


def analyse(url: str) -> None:
    """Planner statistics, as autovacuum keeps them on a ledger in service (right after
    a bulk load it has none, and the planner would scan the table)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE consent_events")


def message_recipients(index: int) -> list[str]:
    """60 acme subscribers, a different slice per message (some unsubscribed)."""
    first = (index * MESSAGE_SIZE) % (SUBSCRIBERS - MESSAGE_SIZE)
    return [f"s{n}@list{n % 50}.example" for n in range(first, first + MESSAGE_SIZE)]


def bulk_contenders(store: ConsentStore, client: redis.Redis) -> dict[str, Work]:
    check = ConsentCheck(SETTINGS.consent, lambda: store, RecentRecipients(client, "bench"))
    account = SETTINGS.accounts[0]

    def batched(index: int) -> None:
        store.consenting("acme", message_recipients(index))

    def per_recipient(index: int) -> None:
        for recipient in message_recipients(index):
            store.consenting("acme", [recipient])

    def milter_check(index: int) -> None:
        txn = Transaction(
            client=CLIENT,
            login="news@acme.example",
            account=account,
            account_source="login",
            recipients=message_recipients(index),
            headers=[("Subject", "news"), ("List-Unsubscribe", "<mailto:u@acme.example>")],
        )
        check.at_eom(txn)

    return {"batched": batched, "per recipient": per_recipient, "milter check": milter_check}


def personal_contenders(client: redis.Redis) -> dict[str, Work]:
    def no_ledger() -> ConsentStore:
        raise AssertionError("personal mail must never open the consent ledger")

    check = ConsentCheck(SETTINGS.consent, no_ledger, RecentRecipients(client, "bench"))
    accounts = SETTINGS.accounts

    def ceiling(index: int) -> None:
        client.ping()
        client.ping()

    def consent_check(index: int) -> None:
        txn = Transaction(
            client=CLIENT,
            login="news@x.example",
            account=accounts[index % len(accounts)],
            account_source="login",
            recipients=[f"friend{index % 300}@example.net", "boss@example.com"],
        )
        check.at_eom(txn)
        check.after_verdict(txn, CONTINUE)

    return {"2 bare PINGs (ceiling)": ceiling, "consent check": consent_check}


def one_by_one(work: Work) -> Callable[[int], Step]:
    """Threads deciding one message at a time, each message numbered apart from every
    other thread's."""

    def worker(index: int) -> Step:
        def step(done: int) -> int:
            work(index * 100_003 + done)
            return 1

        return step

    return worker


def measure(
    contenders: dict[str, Work], concurrency: tuple[int, ...], seconds: float, rounds: int
) -> dict[tuple[str, int], float]:
    for work in contenders.values():
        work(0)  # warm up: connections, caches
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for threads in concurrency:
            for name, work in contenders.items():
                rate = throughput(one_by_one(work), threads, seconds)
                rates.setdefault((name, threads), []).append(rate)
    return {key: statistics.median(values) for key, values in rates.items()}


def print_table(
    title: str,
    rates: dict[tuple[str, int], float],
    concurrency: tuple[int, ...],
    ratios: list[tuple[str, str, str]],
) -> None:
    print(f"\n{title}")
    print(f"{'contender':36}" + "".join(f"{f'{t} thread(s)':>14}" for t in concurrency))
    for name in dict.fromkeys(name for name, _ in rates):
        print(f"{name:36}" + "".join(f"{rates[(name, t)]:>14,.0f}" for t in concurrency))
    for label, numerator, denominator in ratios:
        row = [rates[(numerator, t)] / rates[(denominator, t)] for t in concurrency]
        print(f"{label:36}" + "".join(f"{ratio:>14.2f}" for ratio in row))


def memory(client: redis.Redis) -> dict[str, int]:
    """Bytes for one account that wrote to 500 different recipients over the hour."""
    client.flushall()
    now = [1_800_000_000.0]
    recent = RecentRecipients(client, "mem", clock=lambda: now[0])
    addresses = [f"recipient{n}@customer{n % 40}.example" for n in range(500)]
    for minute in range(60):
        recent.add("acme", addresses[minute * 500 // 60 : (minute + 1) * 500 // 60])
        now[0] += 60
    hll = sum(client.memory_usage(key) or 0 for key in client.scan_iter("mem:*"))
    client.sadd("set:{acme}", *addresses)
    client.zadd("zset:{acme}", {address: n for n, address in enumerate(addresses)})
    return {
        "HyperLogLog per minute (sendwarden)": hll,
        "exact SET of addresses": client.memory_usage("set:{acme}") or 0,
        "ZSET address -> last sent": client.memory_usage("zset:{acme}") or 0,
    }


def run(seconds: float, rounds: int, concurrency: tuple[int, ...]) -> None:
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as temp:
        client = connect(RedisSettings(url=redis_server.url, timeout_ms=5000))
        backends: dict[str, str] = {"SQLite": f"sqlite:///{Path(temp) / 'consent.db'}"}
        postgres: PostgresServer | None = None
        if find_bindir() is not None:
            postgres = PostgresServer().start()
            backends["PostgreSQL"] = postgres.new_database("bench")
        try:
            for backend, url in backends.items():
                store = open_consent_store(url, timeout_ms=10_000)
                try:
                    started = time.perf_counter()
                    events = seed(store)
                    took = time.perf_counter() - started
                    if backend == "PostgreSQL":
                        analyse(url)
                    print(f"\n{backend}: seeded {events:,} events in {took:.1f} s")
                    rates = measure(bulk_contenders(store, client), concurrency, seconds, rounds)
                finally:
                    store.close()
                print_table(
                    f"{backend}: 60-recipient bulk messages decided per second "
                    f"(median of {rounds} rounds of {seconds:g} s)",
                    rates,
                    concurrency,
                    [
                        ("batched / per recipient (goal > 5)", "batched", "per recipient"),
                        ("milter check / batched (goal >= 0.8)", "milter check", "batched"),
                    ],
                )
            client.flushall()
            rates = measure(personal_contenders(client), concurrency, seconds, rounds)
            print_table(
                "Personal mail: consent check cost per message, messages/s (Redis only)",
                rates,
                concurrency,
                [("check / ceiling (goal >= 0.5)", "consent check", "2 bare PINGs (ceiling)")],
            )
            print("\nRedis memory for one account, 500 different recipients in the hour")
            for label, size in memory(client).items():
                print(f"{label:36}{size:>10,} bytes")
        finally:
            client.close()
            if postgres is not None:
                postgres.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    run(args.seconds, args.rounds, tuple(args.threads))


if __name__ == "__main__":
    main()
