"""A pymilter milter that does nothing, negotiating exactly sendwarden's steps: the
floor for any milter written on pymilter. (tests/support/noop_milter.py records every
callback for the tests; this one must not, or it would measure its own recording.)

    python -m loadtest.noop_pymilter SOCKET STEPS
"""

from __future__ import annotations

import sys

import Milter

from sendwarden.milter.adapter import negotiate_steps

STEPS = 0


class NoopMilter(Milter.Base):  # type: ignore[misc]
    """CONTINUE everywhere; no reply where the step was negotiated without one."""

    def negotiate(self, opts: list[int]) -> int:
        return negotiate_steps(self, opts, STEPS)

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return int(Milter.CONTINUE)

    def envfrom(self, mail_from: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def envrcpt(self, recipient: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def data(self) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        return int(Milter.CONTINUE)


def main(argv: list[str]) -> int:
    global STEPS
    socket, steps = argv
    STEPS = int(steps, 0)
    Milter.factory = NoopMilter
    print(f"noop pymilter listening on {socket}", flush=True)
    Milter.runmilter("noop-pymilter", socket, 60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
