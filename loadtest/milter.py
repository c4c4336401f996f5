"""How much the milter costs Postfix: smtp-source into a private Postfix relaying to a
sink, with no milter (the baseline), a no-op pymilter (the floor for any Python milter),
and sendwarden with every check on (unix and inet sockets). One run, printed as ratios.

    .venv/bin/python -m loadtest.milter [--messages 1000] [--sessions 10]

Needs root (a private Postfix) and Debian's postfix package (smtp-source).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from tests.support.rig import Rig, start_rig

SENDER = "alice@acme.example"
RECIPIENT = "bob@remote.example"
SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("postfix, no milter (baseline)", {"milter": "none"}),
    ("no-op pymilter, unix socket", {"milter": "noop"}),
    ("sendwarden, unix socket", {"milter": "sendwarden"}),
    ("sendwarden, inet socket", {"milter": "sendwarden", "milter_socket": "inet"}),
]
POLICY = {
    # 127.0.0.0/8 is trusted and the sender's domain is acme's: every message is
    # attributed, counted and checked, as a customer's web server's mail would be.
    "trusted_networks": ["127.0.0.0/8"],
    "recipients_per_hour": 100_000_000,
}


def run_scenario(
    kwargs: dict[str, Any],
    messages: int,
    sessions: int,
    config_extra: dict[str, dict[str, Any]] | None = None,
    cpu: list[float] | None = None,
) -> float:
    """Messages per second accepted by Postfix (smtp-source's wall time). ``cpu``, when
    given, gets the milter process's CPU seconds (user + system) spent on the run."""
    with contextlib.ExitStack() as stack:
        extra = {"log": {"decisions": False}, **(config_extra or {})}
        rig: Rig = start_rig(stack, policy=POLICY, config_extra=extra, **kwargs)
        command = [
            shutil.which("smtp-source") or "/usr/sbin/smtp-source",
            "-s", str(sessions), "-m", str(messages), "-l", "2000",
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.example",
            f"127.0.0.1:{rig.postfix.smtp_port}",
        ]  # fmt: skip
        cpu_before = process_cpu(rig.milter.pid if rig.milter else None)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        elapsed = time.perf_counter() - started
        rig.sink.wait_for(messages, timeout=300)  # all delivered: nothing was refused
        if cpu is not None:
            cpu.append(process_cpu(rig.milter.pid if rig.milter else None) - cpu_before)
        return messages / elapsed


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args(list(argv))
    print(f"{args.messages} messages of 2 KB, {args.sessions} parallel SMTP sessions, "
          "one message per connection")  # fmt: skip
    rates: list[tuple[str, float]] = []
    for label, kwargs in SCENARIOS:
        rates.append((label, run_scenario(kwargs, args.messages, args.sessions)))
    baseline = rates[0][1]
    print(f"{'scenario':34} {'msg/s':>8} {'vs no milter':>13}")
    for label, rate in rates:
        print(f"{label:34} {rate:8.0f} {rate / baseline:13.2f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
