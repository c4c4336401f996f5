"""A no-op pymilter that records every callback and the MTA macros it can see.

It proves the end-to-end harness without depending on sendwarden's milter, and it is how
we learn what Postfix really hands a milter (which macros at which stage, what
``connect()`` gets for sendmail(1) submissions). Run it as a script in a subprocess:

    python tests/support/noop_milter.py --socket unix:/tmp/x/milter.sock \
        --events /tmp/x/events.jsonl [--verdict 'eom=reject:550:5.7.1:no thanks']

Each callback appends one JSON object to the events file: ``conn`` (a per-connection
number), ``cb`` (callback name), ``args`` and ``macros`` (every macro in ``MACROS`` that
``getsymval`` returns a value for). ``--verdict STAGE[@MATCH]=ACTION[:CODE:XCODE:TEXT]``
makes it answer something other than CONTINUE at a stage (optionally only when the
envelope address or header contains MATCH), so tests can see what Postfix does with it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import Milter

#: Macros asked for in every callback: Postfix's defaults and the sendmail classics.
MACROS = (
    "i", "j", "_", "v", "{daemon_name}", "{daemon_addr}", "{daemon_port}",
    "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
    "{client_resolve}", "{client_connections}", "{if_name}", "{if_addr}",
    "{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}",
    "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}",
    "{mail_mailer}", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}",
)  # fmt: skip

STAGES = ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom")
ACTIONS = {
    "continue": Milter.CONTINUE,
    "accept": Milter.ACCEPT,
    "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL,
    "discard": Milter.DISCARD,
}


@dataclass(frozen=True)
class Verdict:
    """What to answer at one stage instead of CONTINUE."""

    stage: str
    action: str
    match: str | None = None
    code: str | None = None
    xcode: str | None = None
    text: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Verdict:
        """Parse ``STAGE[@MATCH]=ACTION[:CODE:XCODE:TEXT]``."""
        where, _, what = spec.partition("=")
        stage, _, match = where.partition("@")
        action, *reply = what.split(":", 3)
        if stage not in STAGES or action not in ACTIONS:
            raise ValueError(f"bad verdict {spec!r}: stages {STAGES}, actions {list(ACTIONS)}")
        code, xcode, text = [*reply, None, None, None][:3]
        return cls(stage, action, match or None, code, xcode, text)

    def to_arg(self) -> str:
        where = self.stage + (f"@{self.match}" if self.match else "")
        reply = [r for r in (self.code, self.xcode, self.text) if r is not None]
        return f"{where}={':'.join([self.action, *reply])}"


class _Recorder:
    """Appends JSON lines; libmilter runs callbacks on many threads."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=repr, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


_recorder: _Recorder | None = None
_verdicts: list[Verdict] = []
_conn_ids = itertools.count(1)


class NoopMilter(Milter.Base):  # type: ignore[misc]
    """Records everything, changes nothing, answers CONTINUE unless a verdict says so."""

    def __init__(self) -> None:
        self.conn = next(_conn_ids)

    def _event(self, cb: str, **args: Any) -> None:
        macros = {}
        for name in MACROS:
            value = self.getsymval(name)
            if value is not None:
                macros[name] = value
        assert _recorder is not None
        _recorder.write({"conn": self.conn, "cb": cb, "args": args, "macros": macros})

    def _answer(self, stage: str, subject: str = "") -> int:
        for verdict in _verdicts:
            if verdict.stage != stage or (verdict.match and verdict.match not in subject):
                continue
            if verdict.code:
                self.setreply(verdict.code, verdict.xcode, verdict.text)
            return int(ACTIONS[verdict.action])
        return int(Milter.CONTINUE)

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self._event("connect", hostname=hostname, family=int(family), hostaddr=hostaddr)
        return self._answer("connect", hostname)

    def hello(self, hostname: str) -> int:
        self._event("helo", hostname=hostname)
        return self._answer("helo", hostname)

    def envfrom(self, mail_from: str, *params: str) -> int:
        self._event("mail", mail_from=mail_from, params=list(params))
        return self._answer("mail", mail_from)

    def envrcpt(self, rcpt: str, *params: str) -> int:
        self._event("rcpt", rcpt=rcpt, params=list(params))
        return self._answer("rcpt", rcpt)

    def data(self) -> int:
        self._event("data")
        return self._answer("data")

    def header(self, name: str, value: str) -> int:
        self._event("header", name=name, value=value)
        return self._answer("header", f"{name}: {value}")

    def eoh(self) -> int:
        self._event("eoh")
        return self._answer("eoh")

    def body(self, chunk: bytes) -> int:
        self._event("body", size=len(chunk))
        return self._answer("body")

    def eom(self) -> int:
        self._event("eom")
        return self._answer("eom")

    def abort(self) -> int:
        self._event("abort")
        return int(Milter.CONTINUE)

    def close(self) -> int:
        self._event("close")
        return int(Milter.CONTINUE)


def command(socket: str, events: Path, verdicts: Sequence[Verdict] = ()) -> list[str]:
    """argv that runs this milter in a subprocess (for ``MilterProcess(argv=...)``)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--socket", socket]
    argv += ["--events", str(events)]
    for verdict in verdicts:
        argv += ["--verdict", verdict.to_arg()]
    return argv


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events recorded so far, oldest first."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    global _recorder
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--socket", required=True, help="libmilter socket, e.g. unix:/path")
    parser.add_argument("--events", required=True, type=Path, help="JSON-lines output file")
    parser.add_argument("--verdict", action="append", default=[], type=Verdict.parse)
    parser.add_argument("--timeout", type=int, default=60)
    args = parser.parse_args(argv)
    _recorder = _Recorder(args.events)
    _verdicts.extend(args.verdict)
    Milter.factory = NoopMilter
    print(f"noop milter listening on {args.socket}", flush=True)
    Milter.runmilter("noop-milter", args.socket, args.timeout)
    print("noop milter stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
