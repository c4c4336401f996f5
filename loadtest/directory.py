"""The directory at hosting scale: ``python -m loadtest.directory``.

A directory of 100,000 accounts, 250,000 domains and 500,000 logins, from a
``domain: account`` map file and from SQL (a private PostgreSQL started here), against
an empty directory measured in the same run:

* ready: seconds from starting ``sendwarden milter`` until its socket answers;
* RSS: the milter's resident memory once ready, and what the directory adds to it;
* attribution: one ``AccountDirectory.resolve`` of a login (a mailbox address or a
  listed login), in microseconds, against the config-only directory;
* p99: the 99th percentile latency of whole decisions (MAIL, RCPT, headers, end of
  message through the real pipeline and a private Redis) while the directory is being
  refreshed back to back, against the same decisions with no refresh; rounds are
  interleaved so the machine's noise hits both alike.

The map file has the 250,000 domains (its 500,000 mailbox logins are addresses in
them and need no listing); the SQL source lists 250,000 domains and 500,000 logins,
half of them addresses in the account's domains and half bare login names.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from sendwarden.config import settings_from_mapping
from sendwarden.directory.live import LiveDirectory, account_directory
from sendwarden.policy.accounts import AccountDirectory
from sendwarden.policy.facts import Client
from sendwarden.runtime import build_runtime
from tests.support.milter_process import MilterProcess
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import dumps_toml

LOCALHOST = Client(address=None, hostname="localhost")


@dataclass(frozen=True)
class Scale:
    accounts: int
    domains: int
    logins: int

    def owner(self, domain: int) -> str:
        return f"customer{domain % self.accounts}"


def write_map(path: Path, scale: Scale) -> None:
    with path.open("w") as handle:
        handle.writelines(f"site{d}.example: {scale.owner(d)}\n" for d in range(scale.domains))


def login_of(n: int, scale: Scale) -> tuple[str, str]:
    """Login ``n`` and its account: even ones are mailboxes in the account's domain,
    odd ones bare login names (which only a listing can place)."""
    domain = n % scale.domains
    if n % 2 == 0:
        return f"user{n}@site{domain}.example", scale.owner(domain)
    return f"ftp{n}", scale.owner(domain)


def load_sql(url: str, scale: Scale) -> None:
    with psycopg.connect(url) as connection:
        connection.execute(
            "CREATE TABLE directory (account text NOT NULL, domain text, login text)"
        )
        with connection.cursor().copy("COPY directory (account, domain, login) FROM STDIN") as copy:
            for d in range(scale.domains):
                copy.write_row((scale.owner(d), f"site{d}.example", None))
            for n in range(scale.logins):
                login, account = login_of(n, scale)
                copy.write_row((account, None, login))


SQL_QUERY = "SELECT account, domain, login FROM directory"


def config(
    workdir: Path, redis_url: str, directory: dict[str, Any], name: str
) -> tuple[Path, dict[str, Any]]:
    document: dict[str, Any] = {
        "milter": {"socket": f"unix:{workdir / (name + '.sock')}", "socket_mode": "0666"},
        "redis": {"url": redis_url},
        "policy": {"recipients_per_hour": 1_000_000_000, "trusted_networks": []},
        "consent": {"database": f"sqlite:///{workdir / 'consent.db'}"},
        "log": {"decisions": False, "level": "info"},
        "accounts": [{"id": "small", "logins": ["small-login"], "domains": ["small.example"]}],
    }
    if directory:
        document["directory"] = {**directory, "refresh": "1h", "max_shrink_percent": 100}
    path = workdir / f"{name}.toml"
    path.write_text(dumps_toml(document))
    return path, document


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_milter(path: Path) -> tuple[float, int, float]:
    """Seconds until the milter answers, its RSS (KiB) then, and the seconds its log
    says reading the directory took (0 without one)."""
    log_path = path.with_suffix(".log")
    log_path.unlink(missing_ok=True)
    milter = MilterProcess(path, log_path=log_path, start_timeout=120)
    started = time.perf_counter()
    milter.start()
    ready = time.perf_counter() - started
    time.sleep(0.5)  # let start-up garbage settle
    assert milter.pid is not None
    rss = rss_kib(milter.pid)
    milter.stop()
    log = milter.log()
    loaded = re.search(r"directory loaded in ([0-9.]+)s", log)
    if loaded is None or "starting on the last good one" in log:
        return ready, rss, 0.0  # nothing read before answering
    return ready, rss, float(loaded.group(1))


def attribution_cost(directory: AccountDirectory, logins: Sequence[str], repeat: int = 3) -> float:
    """Microseconds per ``resolve`` of a login (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for login in logins:
            directory.resolve(login=login, uid=None, client_address=None)
        best = min(best, (time.perf_counter() - started) / len(logins))
    return best * 1e6


def decision(pipeline: Any, login: str) -> None:
    txn = pipeline.begin(LOCALHOST, login=login, mail_from=login)
    pipeline.mail(txn)
    pipeline.rcpt(txn, "bob@remote.example")
    pipeline.header(txn, "From", login)
    pipeline.header(txn, "To", "bob@remote.example")
    pipeline.eom(txn)


def latencies(pipeline: Any, logins: Sequence[str], count: int) -> list[float]:
    out = []
    for index in range(count):
        started = time.perf_counter()
        decision(pipeline, logins[index % len(logins)])
        out.append(time.perf_counter() - started)
    return out


def p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def during_one_refresh(pipeline: Any, logins: Sequence[str], live: LiveDirectory) -> list[float]:
    """Decision latencies for as long as one whole (forced) refresh of ``live`` takes:
    reading every source in the child, writing the snapshot, swapping it in."""
    done = threading.Event()

    def refresh() -> None:
        live.refresh(force=True)
        done.set()

    thread = threading.Thread(target=refresh, daemon=True)
    out: list[float] = []
    thread.start()
    while not done.is_set():
        out += latencies(pipeline, logins, 50)
    thread.join()
    return out


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=250_000)
    parser.add_argument("--logins", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=1500)
    parser.add_argument(
        "--parts",
        default="start,attribution,latency",
        help="which measurements, comma-separated (default: all)",
    )
    args = parser.parse_args(list(argv))
    scale = Scale(args.accounts, args.domains, args.logins)
    logging.basicConfig(level=logging.WARNING, stream=io.StringIO())
    print(
        f"directory: {scale.accounts} accounts, {scale.domains} domains, {scale.logins} "
        f"logins; load average {os.getloadavg()[0]:.1f} at start"
    )
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sw-bench-dir-")))
        redis = stack.enter_context(RedisServer())
        postgres = stack.enter_context(PostgresServer())
        started = time.perf_counter()
        map_path = workdir / "userdomains"
        write_map(map_path, scale)
        sql_url = postgres.new_database()
        load_sql(sql_url, scale)
        print(f"(test data written in {time.perf_counter() - started:.1f}s)")
        sources = {
            "empty": {},
            "map file": {"domain_map": str(map_path)},
            "SQL (PostgreSQL)": {"sql_url": sql_url, "sql_query": SQL_QUERY},
            "map file, kept": {
                "domain_map": str(map_path),
                "state_directory": str(workdir / "state-map"),
            },
            "SQL, kept": {
                "sql_url": sql_url,
                "sql_query": SQL_QUERY,
                "state_directory": str(workdir / "state-sql"),
            },
        }
        configs = {
            name: config(workdir, redis.url, spec, f"c{index}")
            for index, (name, spec) in enumerate(sources.items())
        }

        parts = set(args.parts.split(","))
        # -- ready time and memory, interleaved -------------------------------------
        # "kept": state_directory holds the last good directory of these sources (the
        # runs before left it there), so the milter answers on it and re-reads after.
        starts: dict[str, list[tuple[float, int, float]]] = {name: [] for name in sources}
        for name in ("map file, kept", "SQL, kept") if "start" in parts else ():
            start_milter(configs[name][0])  # leaves the kept directory
        for _ in range(args.rounds if "start" in parts else 0):
            for name, (path, _) in configs.items():
                starts[name].append(start_milter(path))
        if "start" in parts:
            print_starts(starts)
        if "attribution" in parts:
            print_attribution(configs, scale)
        if "latency" in parts:
            print_latency(configs, scale, args.rounds, args.decisions)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


def print_starts(starts: dict[str, list[tuple[float, int, float]]]) -> None:
    empty_rss = statistics.median(run[1] for run in starts["empty"])
    empty_ready = statistics.median(run[0] for run in starts["empty"])
    print(
        f"\n{'milter start':18} {'ready s':>8} {'vs empty':>9} {'read first s':>13} "
        f"{'RSS MiB':>8} {'extra MiB':>10}"
    )
    for name, runs in starts.items():
        ready = statistics.median(run[0] for run in runs)
        rss = statistics.median(run[1] for run in runs)
        build = statistics.median(run[2] for run in runs)
        print(
            f"{name:18} {ready:8.2f} {ready - empty_ready:+9.2f} {build:13.2f} "
            f"{rss / 1024:8.1f} {(rss - empty_rss) / 1024:10.1f}"
        )


Configs = dict[str, tuple[Path, dict[str, Any]]]


def sample_logins(scale: Scale) -> list[str]:
    rng = random.Random(7)
    return [login_of(rng.randrange(scale.logins), scale)[0] for _ in range(5000)]


def print_attribution(configs: Configs, scale: Scale) -> None:
    sample = sample_logins(scale)
    mailboxes = [login for login in sample if "@" in login]
    small = AccountDirectory(settings_from_mapping(configs["empty"][1]).accounts)
    base = attribution_cost(small, ["small-login"] * 5000)
    print(f"\n{'attribution (resolve a login)':40} {'us':>7} {'vs config-only':>15}")
    print(f"{'config-only directory, listed login':40} {base:7.1f} {1.0:15.2f}")
    for name in ("map file", "SQL (PostgreSQL)"):
        live = LiveDirectory(settings_from_mapping(configs[name][1]), notifiers=[])
        live.load()
        directory = account_directory(live)
        for label, logins in (("mailbox address", mailboxes), ("mixed logins", sample)):
            if name == "map file" and label == "mixed logins":
                continue  # bare logins are in no map file
            cost = attribution_cost(directory, logins)
            print(f"{name + ', ' + label:40} {cost:7.1f} {cost / base:15.2f}")
        live.close()


def print_latency(configs: Configs, scale: Scale, rounds: int, count: int) -> None:
    decision_logins = [login for login in sample_logins(scale) if "@" in login][:200]
    for name in ("map file", "SQL (PostgreSQL)"):
        runtime = build_runtime(settings_from_mapping(configs[name][1]))
        live = runtime.live_directory
        assert live is not None
        pipeline = runtime.pipeline
        latencies(pipeline, decision_logins, 200)  # warm up
        quiet: list[float] = []
        busy: list[float] = []
        ratios: list[float] = []
        for _ in range(rounds):
            busy_round = during_one_refresh(pipeline, decision_logins, live)
            quiet_round = latencies(pipeline, decision_logins, max(count, len(busy_round)))
            quiet += quiet_round
            busy += busy_round
            ratios.append(p99(busy_round) / p99(quiet_round))
        runtime.close()
        print(
            f"\ndecisions, {name}: p99 {p99(quiet) * 1e3:.2f} ms without a refresh, "
            f"{p99(busy) * 1e3:.2f} ms during refreshes ({len(busy)} decisions during "
            f"{rounds} refreshes)\n  ratio {p99(busy) / p99(quiet):.2f} overall, "
            f"median of the rounds' ratios {statistics.median(ratios):.2f} (goal <= 1.2); "
            f"median latency {statistics.median(quiet) * 1e3:.2f} / "
            f"{statistics.median(busy) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
