"""What the SMTP policy proxy costs: Exim alone against Exim with ``sendwarden proxy``
(the deploy/exim wiring), and Postfix with the sendwarden milter against Postfix with the
proxy as ``smtpd_proxy_filter``; 1 and 10 SMTP sessions; one run, configurations
interleaved and repeated, the best of each printed with its ratio to its baseline.

    .venv/bin/python -m loadtest.proxy [--messages 200] [--rounds 2] [--client smtp-source]
                                       [--sessions 1 10] [--mta exim postfix]

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
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.rig import Rig, start_rig

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


def run_once(kwargs: dict[str, Any], messages: int, sessions: int, client: str) -> float:
    """Messages per second, end to end."""
    with contextlib.ExitStack() as stack:
        rig: Rig = start_rig(
            stack,
            policy=POLICY,
            accounts=ACCOUNTS,
            config_extra={"log": {"decisions": False}},
            **kwargs,
        )
        command = client_command(client, rig.mta.smtp_port, messages, sessions)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                check=False, cwd=REPO)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed: {result.stdout}{result.stderr}\n{rig.report()}"
            )
        rig.sink.wait_for(messages, timeout=600)  # all delivered: nothing was refused
        return messages / (time.perf_counter() - started)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=("mta", "smtp-source"), default="mta")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--mta", choices=("exim", "postfix"), nargs="+",
                        default=["exim", "postfix"], help="the rows to run")  # fmt: skip
    args = parser.parse_args(list(argv))
    configs = [config for config in CONFIGS if config[0].split()[0] in args.mta]
    load = os.getloadavg()[0]
    print(f"{args.messages} messages of 2 KB per run, one message per connection, "
          f"client {args.client}, best of {args.rounds} interleaved rounds; "
          f"load average {load:.1f}")  # fmt: skip
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for sessions in args.sessions:
            for label, _, kwargs in configs:
                rate = run_once(kwargs, args.messages, sessions, args.client)
                best[label, sessions] = max(best.get((label, sessions), 0.0), rate)
    print(f"{'configuration':30} {'sessions':>8} {'msg/s':>8} {'vs baseline':>12}")
    for sessions in args.sessions:
        for label, baseline, _ in configs:
            rate = best[label, sessions]
            ratio = rate / best[baseline, sessions]
            print(f"{label:30} {sessions:8d} {rate:8.1f} {ratio:12.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
