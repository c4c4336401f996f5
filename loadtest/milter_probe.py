"""One Postfix and one milter from ``loadtest.milter``; mail sent while a tool watches
the milter process (perf, strace, py-spy), for profiles of the real set-up.

    .venv/bin/python -m loadtest.milter_probe sendwarden 10 1 400
    .venv/bin/python -m loadtest.milter_probe sendwarden 1 1 300 -- \\
        strace -c -f -p {pid} -o {out}
    .venv/bin/python -m loadtest.milter_probe asyncio-sendwarden 10 1 600 -- \\
        perf record -F 1999 -p {pid} -o /tmp/perf.data

Arguments: the set-up (``c``, ``pymilter``, ``sendwarden``, ``asyncio-noop``,
``asyncio-sendwarden``), sessions, recipients, messages per batch; after ``--`` the
tool's command, ``{pid}`` the milter's process id and ``{out}`` a file the tool may
write (printed after the batch). The milter first takes 1,000 messages (every
account once: caches warm). Each batch prints msg/s, the milter's CPU per message,
end-of-data p50/p99, Redis round trips and the context switches of its live threads.
``--batches N`` repeats; ``--pin CPUS`` runs every other batch with the milter's
threads pinned to CPUS (``taskset``), the others on every core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from loadtest.milter import (
    ACCOUNTS,
    PASSWORD,
    Setup,
    load_average,
    login,
    measure,
    percentile,
    start_setup,
    start_shared,
)


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary switches of the process's live threads."""
    voluntary = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def probe(argv: Sequence[str]) -> None:
    """Not ``main``: ``python -m loadtest`` runs every module's ``main()`` as a benchmark."""
    own, tool = list(argv), []
    if "--" in own:
        at = own.index("--")
        own, tool = own[:at], own[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("setup")
    parser.add_argument("sessions", type=int)
    parser.add_argument("recipients", type=int)
    parser.add_argument("messages", type=int)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--pin", help="every other batch, the milter's threads on these CPUs")
    args = parser.parse_args(own)
    with contextlib.ExitStack() as stack:
        shared = start_shared(stack)
        observer = shared.observer
        running = start_setup(
            stack,
            Setup(args.setup, args.setup),
            directory=shared.directory,
            sink_port=shared.sink.port,
            sasl_users={login(n): PASSWORD for n in range(ACCOUNTS)},
            sasldb=None,
            c_binary=shared.c_binary,
            redis_url=shared.redis.url,
            key_file=shared.key_file,
        )
        assert running.milter is not None and running.milter.pid
        pid = running.milter.pid
        measure(running, observer, ACCOUNTS, 10, args.recipients, 0)  # warm
        offset = ACCOUNTS
        for batch in range(args.batches):
            label = ""
            if args.pin:
                cpus = args.pin if batch % 2 else f"0-{(os.cpu_count() or 1) - 1}"
                subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                label = f"milter on CPUs {cpus}: "
            out = shared.directory / f"tool-{batch}.out"
            watcher = None
            if tool:
                command = [part.format(pid=pid, out=out) for part in tool]
                watcher = subprocess.Popen(command, stdout=subprocess.DEVNULL)
                time.sleep(1.5)  # attached
            before = context_switches(pid)
            rate, latencies, cpu_ms, trips = measure(
                running, observer, args.messages, args.sessions, args.recipients, offset
            )
            after = context_switches(pid)
            offset += args.messages
            print(
                f"{label}{args.setup} {args.sessions}x{args.recipients}: {rate:.0f} msg/s, "
                f"milter CPU {cpu_ms:.2f} ms/msg, end-of-data p50 "
                f"{percentile(latencies, 0.5) * 1000:.1f} p99 "
                f"{percentile(latencies, 0.99) * 1000:.1f} ms, Redis {trips:.1f}, "
                f"context switches/msg {(after[0] - before[0]) / args.messages:.1f} voluntary "
                f"{(after[1] - before[1]) / args.messages:.1f} involuntary, "
                f"load {load_average()}",
                flush=True,
            )
            if watcher is not None:
                watcher.send_signal(signal.SIGINT)
                watcher.wait(120)
                if out.exists():
                    print(out.read_text(errors="replace"))


if __name__ == "__main__":
    probe(sys.argv[1:])
