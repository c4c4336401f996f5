"""What a milter costs Postfix, measured honestly.

    .venv/bin/python -m loadtest.milter [--quick] [--rounds 5] [--messages 300]

One private Postfix per set-up, all relaying to Postfix's smtp-sink (its own process):
no milter (bare Postfix), a C libmilter no-op (the limit for any milter: the price of
the protocol itself), a pymilter no-op, and sendwarden with every rule on (suspension,
relay, recipient rate limit, identity, attachment cap, consent, DKIM signing), the
no-ops negotiating exactly sendwarden's steps and macros. 1,000 accounts, each message
sent by one of them after a SASL login, one message per connection; 1 and 10
recipients, 1 and 10 sessions, unix and inet milter sockets. Set-ups are interleaved
(rotated each round) over several rounds; msg/s is the median with the range.

Printed per cell: msg/s, ratio to the C no-op on the same socket and to bare Postfix,
end-of-data latency p50/p99 (the client's "." to Postfix's 250: the milter's
end-of-message work), milter CPU ms per message (utime+stime of the milter process
from /proc) and Redis round trips per message (read events Redis processed, from
INFO stats total_reads_processed: one per request or pipeline).

``--metrics`` instead compares sendwarden with its Prometheus metrics off and on (the
same configuration otherwise), beside bare Postfix and the C no-op.

Needs root (private Postfix instances) and Debian's postfix and libmilter-dev.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from loadtest.smtp_client import Message, send_many
from sendwarden.dkim.keys import generate_key
from sendwarden.milter.adapter import _STEP_BITS, MACROS, protocol_steps
from tests.support.milter_process import MilterProcess
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix
from tests.support.redis_server import RedisServer
from tests.support.sendwarden_config import write_config
from tests.support.sink import SinkProcess

ACCOUNTS = 1000
PASSWORD = "benchmark-secret"
HERE = Path(__file__).resolve().parent
BODY_LINE = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"


def login(number: int) -> str:
    return f"user{number}@d{number}.example"


@dataclass(frozen=True)
class Setup:
    """One milter (or none) on one socket kind, behind its own Postfix."""

    label: str
    milter: str  # "none", "c", "pymilter", "sendwarden", "asyncio-noop", "asyncio-sendwarden"
    socket: str = "unix"  # "unix" or "inet"
    data_reply: bool | None = None  # None: as sendwarden does it (inet sockets only)
    metrics: bool = False  # sendwarden with its Prometheus metrics on (off: listen = "")


SETUPS = (
    Setup("postfix alone", "none"),
    Setup("C no-op, unix", "c"),
    Setup("C no-op, inet", "c", "inet"),
    # What the inet stall costs: the same, with the DATA step skipped (no reply).
    Setup("C no-op, inet, no DATA", "c", "inet", data_reply=False),
    Setup("pymilter no-op, unix", "pymilter"),
    Setup("sendwarden, unix", "sendwarden"),
    Setup("sendwarden, inet", "sendwarden", "inet"),
)
#: --asyncio: the prototype transport (loadtest/asyncio_milter.py) beside libmilter's.
ASYNCIO_SETUPS = (
    Setup("postfix alone", "none"),
    Setup("C no-op, unix", "c"),
    Setup("pymilter no-op, unix", "pymilter"),
    Setup("asyncio no-op, unix", "asyncio-noop"),
    Setup("sendwarden, unix", "sendwarden"),
    Setup("sendwarden asyncio, unix", "asyncio-sendwarden"),
)
#: --metrics: what Prometheus metrics cost, the same sendwarden with them off and on.
METRICS_SETUPS = (
    Setup("postfix alone", "none"),
    Setup("C no-op, unix", "c"),
    Setup("sendwarden, unix", "sendwarden"),
    Setup("sendwarden+metrics, unix", "sendwarden", metrics=True),
)
CELLS = ((10, 1), (10, 10), (1, 1), (1, 10))  # (sessions, recipients)
#: Leaf frames of threads that are idle, not serving a callback.
IDLE_FRAMES = {"Condition.wait", "MilterServer.serve.<locals>.run_libmilter"}


@dataclass
class Running:
    """A started set-up: where to send, which process is the milter."""

    setup: Setup
    postfix: PrivatePostfix
    milter: MilterProcess | None


@dataclass
class Samples:
    """Every round's figures for one set-up in one cell."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    redis_trips: list[float] = field(default_factory=list)


# -- building the set-ups -------------------------------------------------------------


@dataclass
class Shared:
    """What every set-up of a run uses: a directory, the C no-op's binary, the DKIM
    key, Redis (and a connection that stays open to read its counters), smtp-sink."""

    directory: Path
    c_binary: Path
    key_file: Path
    redis: RedisServer
    observer: Redis
    sink: SinkProcess


def start_shared(stack: contextlib.ExitStack) -> Shared:
    directory = Path(tempfile.mkdtemp(prefix="sw-bench-"))
    directory.chmod(0o755)  # Postfix (user postfix) reaches the milter sockets here
    stack.callback(subprocess.run, ["rm", "-rf", str(directory)], check=False)
    c_binary = build_c_noop(directory)
    key_file = directory / "dkim.key"
    generate_key(key_file)
    redis = RedisServer()
    stack.callback(redis.close)
    redis.start()
    observer = stack.enter_context(Redis.from_url(redis.url))
    sink = SinkProcess(backlog=512)
    stack.callback(sink.close)
    sink.start()
    return Shared(directory, c_binary, key_file, redis, observer, sink)


def build_c_noop(directory: Path) -> Path:
    """Compile the C no-op milter (libmilter-dev, from install-system-deps.sh)."""
    binary = directory / "noop_milter"
    subprocess.run(
        ["cc", "-O2", "-o", str(binary), str(HERE / "noop_milter.c"), "-lmilter", "-pthread"],
        check=True,
    )
    return binary


def sendwarden_config(
    directory: Path, socket: str, redis_url: str, key_file: Path, metrics: bool = False
) -> Path:
    accounts = [
        {"id": f"acct{n}", "logins": [login(n)], "domains": [f"d{n}.example"], "networks": []}
        for n in range(ACCOUNTS)
    ]
    return write_config(
        directory / f"sendwarden-{socket.split(':')[0]}{'-metrics' if metrics else ''}.toml",
        socket=socket,
        redis_url=redis_url,
        accounts=accounts,
        policy={"recipients_per_hour": 100_000_000, "check_attachments": True},
        consent={"bulk_distinct_recipients_per_hour": 100_000_000},
        extra={
            "log": {"decisions": False},
            "metrics": {"listen": f"127.0.0.1:{free_port()}" if metrics else ""},
            # A 2-core machine at load 15 can stall Redis past the default: a 451 is
            # then the right answer, but not what this measures.
            "redis": {"timeout_ms": 5000},
            "dkim": [
                {"domain": f"d{n}.example", "selector": "bench", "key_file": str(key_file)}
                for n in range(ACCOUNTS)
            ],
        },
    )


#: The no-op milters, each negotiating the steps, no-reply flags and macro lists it is given.
NOOPS = ("c", "pymilter", "asyncio-noop")


def noop_argv(milter: str, socket: str, steps: int, c_binary: Path) -> list[str]:
    """The command of a no-op milter (one of :data:`NOOPS`) negotiating ``steps`` and
    sendwarden's macro lists (tests/integration/test_benchmark_noops.py holds their
    negotiation to sendwarden's)."""
    if milter == "c":
        symlists = [f"{stage}={macros}" for stage, macros in MACROS.items()]
        return [str(c_binary), socket, hex(steps), hex(_STEP_BITS), *symlists]
    if milter == "pymilter":
        return [sys.executable, "-m", "loadtest.noop_pymilter", socket, hex(steps)]
    if milter == "asyncio-noop":
        return [sys.executable, "-m", "loadtest.asyncio_milter", "noop", socket, hex(steps)]
    raise ValueError(f"not a no-op milter: {milter}")


def start_setup(
    stack: contextlib.ExitStack,
    setup: Setup,
    *,
    directory: Path,
    sink_port: int,
    sasl_users: dict[str, str],
    sasldb: Path | None,
    c_binary: Path,
    redis_url: str,
    key_file: Path,
) -> Running:
    socket = (
        f"unix:{directory / (setup.label.replace(' ', '-').replace(',', '') + '.sock')}"
        if setup.socket == "unix"
        else f"inet:{free_port()}@127.0.0.1"
    )
    data_reply = setup.socket == "inet" if setup.data_reply is None else setup.data_reply
    steps = protocol_steps(needs_body=True, data_reply=data_reply)
    process: MilterProcess | None = None
    suffix = "-metrics" if setup.metrics else ""
    log_path = directory / f"{setup.milter}-{setup.socket}-{data_reply}{suffix}.log"
    if setup.milter in NOOPS:
        argv = noop_argv(setup.milter, socket, steps, c_binary)
        process = MilterProcess(argv=argv, socket=socket, log_path=log_path)
    elif setup.milter in ("sendwarden", "asyncio-sendwarden"):
        config = sendwarden_config(directory, socket, redis_url, key_file, setup.metrics)
        argv = None
        if setup.milter == "asyncio-sendwarden":
            config = config.rename(config.with_suffix(".asyncio.toml"))
            argv = [sys.executable, "-m", "loadtest.asyncio_milter", "sendwarden", str(config)]
        process = MilterProcess(config, argv=argv, log_path=log_path, start_timeout=120)
    if process is not None:
        stack.callback(process.stop)
        process.start()
    postfix = PrivatePostfix(
        sink_port=sink_port,
        milter=socket if process is not None else None,
        local_domains=["hosting.example"],
        sasl_users=sasl_users,
        sasldb=sasldb,
    )
    stack.callback(postfix.close)
    postfix.start()
    return Running(setup, postfix, process)


# -- measuring ------------------------------------------------------------------------


def message_maker(recipients: int, offset: int) -> Callable[[int], Message]:
    """Message ``i`` comes from account ``(offset + i) % 1000`` to ``recipients``
    addresses, each message to different ones (the consent check counts them)."""
    body = BODY_LINE * 27  # with the headers, about 2 KB

    def make(number: int) -> Message:
        account = (offset + number) % ACCOUNTS
        sender = login(account)
        to = tuple(f"r{number % 5000}-{k}@remote.example" for k in range(recipients))
        head = (
            f"From: User {account} <{sender}>\r\n"
            f"To: {to[0]}\r\n"
            f"Subject: benchmark message {number}\r\n"
            f"Message-ID: <{offset}.{number}@d{account}.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        return Message(sender, PASSWORD, sender, to, head + body)

    return make


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_reads(observer: Redis) -> int:
    """Requests Redis has read: one per command or pipeline, so one per round trip
    (this query's own included). Asked on a connection that stays open: a closing
    connection is one more read."""
    return int(observer.info("stats")["total_reads_processed"])


def measure(
    running: Running,
    observer: Redis,
    messages: int,
    sessions: int,
    recipients: int,
    offset: int,
) -> tuple[float, list[float], float, float]:
    """msg/s, end-of-data latencies, milter CPU ms/message, Redis round trips/message."""
    pid = running.milter.pid if running.milter is not None else None
    cpu_before = cpu_seconds(pid) if pid else 0.0
    reads_before = redis_reads(observer)
    run = send_many(
        running.postfix.smtp_port, messages, sessions, message_maker(recipients, offset)
    )
    cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
    reads = redis_reads(observer) - reads_before - 1  # less the second INFO's own read
    running.postfix.wait_queue_empty(timeout=120)  # deliveries done before the next one
    return messages / run.elapsed, run.end_of_data, cpu * 1000 / messages, reads / messages


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):6.0f} ({min(values):.0f}-{max(values):.0f})"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- the report -----------------------------------------------------------------------


def print_cell(
    sessions: int, recipients: int, results: dict[str, Samples], rounds: int
) -> dict[str, float]:
    """One table; returns the median msg/s and p99 per set-up for the goals."""
    print(
        f"\n{sessions} session(s), {recipients} recipient(s) per message "
        f"(median of {rounds} rounds, range)"
    )
    print(
        f"{'set-up':22} {'msg/s (range)':>17} {'/C no-op':>8} {'/postfix':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'Redis':>6}"
    )
    medians = {label: statistics.median(s.rates) for label, s in results.items()}
    figures: dict[str, float] = {}
    for label, samples in results.items():
        socket = "inet" if "inet" in label else "unix"
        c_noop = medians[f"C no-op, {socket}"]
        p99 = percentile(samples.latencies, 0.99) * 1000
        figures[label] = medians[label]
        figures[label + " p99"] = p99
        figures[label + " cpu"] = statistics.median(samples.cpu_ms) if samples.cpu_ms else 0.0
        cpu = f"{statistics.median(samples.cpu_ms):7.2f}" if samples.cpu_ms else f"{'-':>7}"
        trips = statistics.median(samples.redis_trips) if samples.redis_trips else None
        print(
            f"{label:22} {spread(samples.rates):>17} {medians[label] / c_noop:8.2f} "
            f"{medians[label] / medians['postfix alone']:8.2f} "
            f"{percentile(samples.latencies, 0.5) * 1000:7.1f} {p99:7.1f} {cpu} "
            + (f"{trips:6.1f}" if trips is not None else f"{'-':>6}")
        )
    print(f"load average: {load_average()}")
    return figures


def print_goals(figures: dict[tuple[int, int], dict[str, float]]) -> None:
    print("\nGoals (ratios from this run):")
    milters = [m for m in ("sendwarden, unix", "sendwarden asyncio, unix")
               if any(m in cell for cell in figures.values())]  # fmt: skip
    for milter in milters:
        for sessions, recipients in ((10, 1), (10, 10)):
            cell = figures.get((sessions, recipients))
            if cell:
                ratio = cell[milter] / cell["C no-op, unix"]
                verdict = "met" if ratio >= 0.85 else "NOT met"
                print(
                    f"  {milter.removesuffix(', unix')} / C no-op, unix, {sessions} sessions, "
                    f"{recipients} rcpt: {ratio:.2f} (goal >= 0.85: {verdict})"
                )
    for sessions in (1, 10):
        for recipients in (1, 10):
            cell = figures.get((sessions, recipients))
            if cell and "sendwarden, inet" in cell:
                ratio = cell["sendwarden, inet"] / cell["sendwarden, unix"]
                verdict = "met" if ratio >= 0.9 else "NOT met"
                print(
                    f"  sendwarden inet / unix, {sessions} session(s), {recipients} rcpt: "
                    f"{ratio:.2f} (goal >= 0.9: {verdict})"
                )
    for milter in milters:
        for (sessions, recipients), cell in figures.items():
            ratio = cell[f"{milter} p99"] / cell["C no-op, unix p99"]
            verdict = "met" if ratio <= 1.5 else "NOT met"
            print(
                f"  end-of-data p99 {milter.removesuffix(', unix')} / C no-op, unix, "
                f"{sessions} session(s), {recipients} rcpt: {ratio:.2f} (goal <= 1.5: {verdict})"
            )


def print_metrics_cost(figures: dict[tuple[int, int], dict[str, float]]) -> None:
    print("\nWhat the metrics cost (ratios from this run; CPU: milter CPU ms per message):")
    for (sessions, recipients), cell in figures.items():
        ratio = cell["sendwarden+metrics, unix"] / cell["sendwarden, unix"]
        cpu = cell["sendwarden+metrics, unix cpu"] / cell["sendwarden, unix cpu"]
        print(
            f"  metrics on / off, {sessions} session(s), {recipients} rcpt: throughput "
            f"{ratio:.2f}, milter CPU per message {cpu:.2f}"
        )


def profile(running: Running, messages: int, directory: Path) -> None:
    """Where sendwarden's milter callbacks spend their time (py-spy samples of every
    thread, less the idle ones: the main thread's wait and libmilter's listener in C)
    while it takes 10 sessions of 1-recipient mail. Time waiting for Redis shows as
    ``read_from_socket``; the rest is CPU."""
    assert running.milter is not None and running.milter.pid
    output = directory / "profile.txt"
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
         str(running.milter.pid), "--format", "raw", "--nolineno", "--rate", "250",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    send_many(running.postfix.smtp_port, messages, 10, message_maker(1, 10**6))
    spy.send_signal(2)
    spy.wait(30)
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].split("/")[-1]
                  for frame in stack.split(";") if frame]  # fmt: skip
        count = int(count_text)
        if not frames or frames[-1].split(" (")[0] in IDLE_FRAMES:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    print(
        f"\nprofile of {running.setup.label} (py-spy, {total} samples in callbacks, "
        "10 sessions, 1 rcpt):"
    )
    print("  inclusive (share of samples, top 25):")
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1])[:25]:
        print(f"    {count / total:6.1%}  {frame}")
    print("  self (top 15):")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:15]:
        print(f"    {count / total:6.1%}  {frame}")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=300, help="per set-up, cell and round")
    parser.add_argument(
        "--quick", action="store_true", help="for development: 1 round of 60 messages, 10 sessions"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then profile sendwarden (unix) with py-spy"
    )
    parser.add_argument(
        "--cells", help="only these SESSIONSxRECIPIENTS cells, e.g. 1x1,10x10 (development)"
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="what Prometheus metrics cost: sendwarden with them off and on (unix socket)",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="the prototype asyncio transport beside libmilter's (unix socket)",
    )
    args = parser.parse_args(list(argv))
    setups = METRICS_SETUPS if args.metrics else ASYNCIO_SETUPS if args.asyncio else SETUPS
    rounds, messages, cells = args.rounds, args.messages, CELLS
    if args.cells:
        cells = tuple(
            (int(sessions), int(recipients))
            for sessions, _, recipients in (cell.partition("x") for cell in args.cells.split(","))
        )
    if args.quick:
        rounds, messages = 1, 60
        cells = cells if args.cells else ((10, 1), (10, 10))
    print(
        f"loadtest.milter: {messages} messages of ~2 KB per set-up, cell and round, "
        f"{rounds} round(s), {ACCOUNTS} accounts logging in with SASL PLAIN, "
        f"one message per connection; load average at start {load_average()}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        shared = start_shared(stack)
        directory, c_binary, key_file = shared.directory, shared.c_binary, shared.key_file
        redis, observer, sink = shared.redis, shared.observer, shared.sink
        sasl_users = {login(n): PASSWORD for n in range(ACCOUNTS)}
        started: list[Running] = []
        sasldb: Path | None = None
        for setup in setups:
            running = start_setup(
                stack,
                setup,
                directory=directory,
                sink_port=sink.port,
                sasl_users=sasl_users,
                sasldb=sasldb,
                c_binary=c_binary,
                redis_url=redis.url,
                key_file=key_file,
            )
            sasldb = sasldb or running.postfix.sasldb_path  # written once, shared
            started.append(running)
        for running in started:  # warm-up: imports, lazy connections, caches
            measure(running, observer, 20, 10, 1, offset=0)
        results = {cell: {r.setup.label: Samples() for r in started} for cell in cells}
        offset = 20
        for round_number in range(rounds):
            for sessions, recipients in cells:
                # Rotated each round: no set-up always runs first or after the same one.
                shift = round_number % len(started)
                for running in started[shift:] + started[:shift]:
                    rate, latencies, cpu_ms, trips = measure(
                        running, observer, messages, sessions, recipients, offset
                    )
                    offset += messages
                    samples = results[(sessions, recipients)][running.setup.label]
                    samples.rates.append(rate)
                    samples.latencies.extend(latencies)
                    if running.milter is not None:
                        samples.cpu_ms.append(cpu_ms)
                    if "sendwarden" in running.setup.milter:
                        samples.redis_trips.append(trips)
            print(f"round {round_number + 1}/{rounds} done, load {load_average()}", flush=True)
        if rounds:
            figures = {cell: print_cell(*cell, results[cell], rounds) for cell in cells}
            (print_metrics_cost if args.metrics else print_goals)(figures)
        if args.profile:
            profile(started[setups.index(Setup("sendwarden, unix", "sendwarden"))], 400, directory)


if __name__ == "__main__":
    main(sys.argv[1:])
