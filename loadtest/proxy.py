"""What the SMTP policy proxy costs: Exim alone against Exim with ``sendwarden proxy``
(the deploy/exim wiring), and Postfix with the sendwarden milter against Postfix with the
proxy as ``smtpd_proxy_filter``; 1 and 10 SMTP sessions; one run, configurations
interleaved and repeated, the best of each printed with its ratio to its baseline,
and the median of each round's ratio (steadier on a shared machine).

The row "exim + no-op proxy" routes Exim's mail through ``loadtest/noop_proxy.py``
instead, which speaks to Exim as sendwarden does and does nothing else: what Exim's
own work on the proxy path (the cutthrough, a second reception, its spool writes)
costs whatever the proxy. The gap between it and "exim + sendwarden proxy" is
sendwarden's.

    .venv/bin/python -m loadtest.proxy [--messages 200] [--rounds 2] [--client smtp-source]
                                       [--sessions 1 10] [--mta exim postfix] [--cpu]

``--cpu`` adds the CPU each part used per message (Exim with all its processes, the
proxy process, Redis, the client and the sink), from cgroups: on a shared machine
msg/s swing with the other load, these much less.

Rates are end to end: the client's first connection until the sink has every message
(Exim accepts first and delivers after, through the proxy and its return port). Needs
root, Debian's postfix (smtp-source) and the private Exim (scripts/fetch-private-mtas.sh).

The client (``--client mta``, the default) ends each connection as MTAs do: QUIT and
FIN together, then the 221. ``--client smtp-source`` waits for the 221 before closing,
as MUAs and smtplib do; Exim 4.96 then holds every 221 back for 200 ms (it waits for
the client to close first; Exim bug 3142, fixed in 4.99), so one session cannot pass
5 msg/s whatever the server does, and the ratios hide the cost of the proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.exim import PrivateExim
from tests.support.rig import Rig, start_rig
from tests.support.service import wait_until

REPO = Path(__file__).resolve().parents[1]
SENDER = "alice@acme.example"
RECIPIENT = "bob@remote.example"
POLICY = {"recipients_per_hour": 100_000_000}
#: smtp-source cannot log in: the account owns 127.0.0.1, so every message is
#: attributed (by network), counted and checked, as a customer's web server's would be.
ACCOUNTS = [{"id": "acme", "domains": ["acme.example"], "networks": ["127.0.0.1/32"]}]
#: (label, baseline label, rig arguments)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("exim alone", "exim alone", {"mta": "exim", "milter": "none"}),
    ("exim + no-op proxy", "exim alone", {"mta": "exim", "milter": "noop-proxy"}),
    ("exim + sendwarden proxy", "exim alone", {"mta": "exim", "milter": "sendwarden"}),
    ("postfix + sendwarden milter", "postfix + sendwarden milter", {"milter": "sendwarden"}),
    ("postfix + sendwarden proxy", "postfix + sendwarden milter", {"milter": "proxy"}),
]


def client_command(client: str, port: int, messages: int, sessions: int) -> list[str]:
    """The load generator: smtp-source, or loadtest.smtp_client (QUIT then FIN)."""
    if client == "smtp-source":
        return [
            shutil.which("smtp-source") or "/usr/sbin/smtp-source",
            "-s", str(sessions), "-m", str(messages), "-l", "2000",
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.example", f"127.0.0.1:{port}",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "loadtest.smtp_client", "--port", str(port),
        "--count", str(messages), "--sessions", str(sessions), "--size", "2000",
        "--from", SENDER, "--to", RECIPIENT, "--fin-after-quit",
    ]  # fmt: skip


#: Seconds the sink waits for the last message (a run takes seconds): a message deferred
#: on the way is reported with every part's log, not waited for.
DELIVERY_TIMEOUT = 120.0
CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1; root only
#: What --cpu accounts for, each in a cgroup of its own (children included: Exim's
#: receiving and delivering processes are children of its daemon).
PARTS = ("exim", "proxy", "redis", "client+sink")


class CpuGroups:
    """CPU seconds of the rig's parts, from cpuacct cgroups: unlike msg/s, these do not
    depend on what else the shared machine runs at the time."""

    def __init__(self) -> None:
        self.groups = {part: CPUACCT / f"sw-loadtest-{os.getpid()}-{n}"
                       for n, part in enumerate(PARTS)}  # fmt: skip
        for group in self.groups.values():
            group.mkdir(exist_ok=True)

    def place(self, rig: Rig) -> None:
        # Exim may answer on its port before it writes its pid file: wait for the pid,
        # or its part would silently read 0.
        exim = rig.mta if isinstance(rig.mta, PrivateExim) else None
        pids = {
            "exim": wait_until(exim.pid, 10, "Exim wrote no pid file") if exim else None,
            "proxy": rig.milter.pid if rig.milter else None,  # sendwarden's or the no-op
            "redis": rig.redis.pid if rig.redis else None,
            "client+sink": os.getpid(),  # the sink's thread; the client is a child
        }
        for part, pid in pids.items():
            if pid is not None:
                (self.groups[part] / "cgroup.procs").write_text(f"{pid}\n")

    def seconds(self) -> dict[str, float]:
        return {part: int((group / "cpuacct.usage").read_text()) / 1e9
                for part, group in self.groups.items()}  # fmt: skip

    def close(self) -> None:
        (CPUACCT / "cgroup.procs").write_text(f"{os.getpid()}\n")
        for group in self.groups.values():
            with contextlib.suppress(OSError):  # still holds a process that is ending
                group.rmdir()


def run_once(
    kwargs: dict[str, Any], messages: int, sessions: int, client: str,
    cpu: dict[str, float] | None = None,
) -> float:  # fmt: skip
    """Messages per second, end to end; with ``cpu``, each part's CPU milliseconds per
    message in it."""
    with contextlib.ExitStack() as stack:
        groups = CpuGroups() if cpu is not None else None
        if groups is not None:
            stack.callback(groups.close)  # last: once the rig's processes have ended
        rig: Rig = start_rig(
            stack,
            policy=POLICY,
            accounts=ACCOUNTS,
            config_extra={"log": {"decisions": False}},
            **kwargs,
        )
        if groups is not None:
            groups.place(rig)
            before = groups.seconds()
        command = client_command(client, rig.mta.smtp_port, messages, sessions)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                check=False, cwd=REPO)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed: {result.stdout}{result.stderr}\n{rig.report()}"
            )
        try:  # all delivered: nothing was refused (the rigs' Exim runs no queue runner,
            rig.sink.wait_for(messages, timeout=DELIVERY_TIMEOUT)  # so a deferral stays)
        except TimeoutError as error:  # which part deferred or lost it: their logs
            raise RuntimeError(f"{error}\n{rig.report()}") from error
        rate = messages / (time.perf_counter() - started)
        if groups is not None and cpu is not None:
            after = groups.seconds()
            cpu.update({part: 1000 * (after[part] - before[part]) / messages for part in PARTS})
        return rate


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=("mta", "smtp-source"), default="mta")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--mta", choices=("exim", "postfix"), nargs="+",
                        default=["exim", "postfix"], help="the rows to run")  # fmt: skip
    parser.add_argument("--cpu", action="store_true",
                        help="also the CPU ms per message of each part of the Exim rows "
                        "(root, cgroup v1 cpuacct): the median over the rounds")  # fmt: skip
    args = parser.parse_args(list(argv))
    configs = [config for config in CONFIGS if config[0].split()[0] in args.mta]
    if args.cpu and not os.access(CPUACCT, os.W_OK):
        parser.error(f"--cpu needs root and cgroup v1 cpuacct at {CPUACCT}")
    load = os.getloadavg()[0]
    print(f"{args.messages} messages of 2 KB per run, one message per connection, "
          f"client {args.client}, best of {args.rounds} interleaved rounds; "
          f"load average {load:.1f}")  # fmt: skip
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for sessions in args.sessions:
            for label, _, kwargs in configs:
                used: dict[str, float] | None = {} if args.cpu else None
                try:
                    rate = run_once(kwargs, args.messages, sessions, args.client, used)
                except RuntimeError as error:
                    raise SystemExit(f"{label}, {sessions} session(s): {error}") from error
                rates.setdefault((label, sessions), []).append(rate)
                if used:
                    cpu.setdefault((label, sessions), []).append(used)
    print_rates(rates, configs, args.sessions)
    if cpu:  # Postfix's own processes are not counted: the Exim rows only
        print_cpu(cpu, [config for config in configs if config[2].get("mta") == "exim"],
                  args.sessions)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def print_rates(
    rates: dict[tuple[str, int], list[float]],
    configs: list[tuple[str, str, dict[str, Any]]],
    all_sessions: list[int],
) -> None:
    """The best msg/s of each cell and its ratio to the baseline's best; then the
    median msg/s, and the median of the rounds' own ratios (each round runs a cell
    right after its baseline): one stall of the shared machine's disk moves a best
    of a few short runs, much less the median of the pairs."""
    print(f"{'configuration':30} {'sessions':>8} {'msg/s':>8} {'vs baseline':>12} "
          f"{'median':>8} {'median of round ratios':>23}")  # fmt: skip
    for sessions in all_sessions:
        for label, baseline, _ in configs:
            mine, theirs = rates[label, sessions], rates[baseline, sessions]
            ratio = max(mine) / max(theirs)
            paired = statistics.median(a / b for a, b in zip(mine, theirs, strict=True))
            print(f"{label:30} {sessions:8d} {max(mine):8.1f} {ratio:12.2f} "
                  f"{statistics.median(mine):8.1f} {paired:23.2f}")  # fmt: skip


def print_cpu(
    cpu: dict[tuple[str, int], list[dict[str, float]]],
    configs: list[tuple[str, str, dict[str, Any]]],
    all_sessions: list[int],
) -> None:
    """Median CPU ms per message of each part, and the ratio those totals predict for
    a machine that the rig has to itself (CPU-bound: the baseline's total over this)."""
    print(f"\nCPU ms per message (median of the rounds)\n{'configuration':30} {'sessions':>8} "
          + " ".join(f"{part:>11}" for part in PARTS) + f" {'total':>7} {'ratio':>6}")  # fmt: skip
    for sessions in all_sessions:
        totals: dict[str, float] = {}
        for label, baseline, _ in configs:
            if (label, sessions) not in cpu:
                continue
            runs = cpu[label, sessions]
            parts = {part: statistics.median(run[part] for run in runs) for part in PARTS}
            totals[label] = statistics.median(sum(run.values()) for run in runs)
            ratio = totals[baseline] / totals[label]
            print(f"{label:30} {sessions:8d} "
                  + " ".join(f"{parts[part]:11.1f}" for part in PARTS)
                  + f" {totals[label]:7.1f} {ratio:6.2f}")  # fmt: skip


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
