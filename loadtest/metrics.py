"""What Prometheus metrics cost the milter: the whole-system benchmark of
:mod:`loadtest.milter` (smtp-source into a private Postfix with sendwarden on a unix
socket, every check on) with metrics off (``metrics.listen = ""``) and on, in
interleaved rounds so machine noise hits both alike. Prints the median ratio.

    .venv/bin/python -m loadtest.metrics [--messages 1000] [--sessions 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence

from loadtest.milter import run_scenario
from tests.support.ports import free_port


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(list(argv))
    print(f"{args.messages} messages, {args.sessions} sessions, {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    ratios, cpu_ratios = [], []
    for number in range(args.rounds):
        rates, cpu = {}, {}
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        for mode in order:
            listen = f"127.0.0.1:{free_port()}" if mode == "on" else ""
            used: list[float] = []
            rates[mode] = run_scenario(
                {"milter": "sendwarden"}, args.messages, args.sessions,
                config_extra={"metrics": {"listen": listen}}, cpu=used,
            )  # fmt: skip
            cpu[mode] = used[0] * 1000 / args.messages  # milter CPU ms per message
        ratios.append(rates["on"] / rates["off"])
        cpu_ratios.append(cpu["on"] / cpu["off"])
        print(f"round {number + 1}: off {rates['off']:5.0f} msg/s {cpu['off']:.2f} ms CPU/msg, "
              f"on {rates['on']:5.0f} msg/s {cpu['on']:.2f} ms CPU/msg; "
              f"throughput on/off {ratios[-1]:.3f}, milter CPU on/off {cpu_ratios[-1]:.3f}"
              )  # fmt: skip
    print(f"median throughput on/off: {statistics.median(ratios):.3f}; median milter CPU "
          f"per message on/off: {statistics.median(cpu_ratios):.3f} "
          f"(load average now {os.getloadavg()[0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
