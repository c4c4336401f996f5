"""An SMTP sink on 127.0.0.1 that records every message delivered to it.

Postfix relays everything (local and remote domains) here, so a test asserts on what
actually left the MTA rather than on what the client tried to send.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.ports import free_port, wait_for_tcp
from tests.support.service import ProcessService, Service

#: Large enough for the 20 MiB attachment cap tests (base64 grows a file by 4/3) and more.
DEFAULT_DATA_SIZE_LIMIT = 80 * 1024 * 1024


@dataclass(frozen=True)
class Delivered:
    """One message as the sink received it (``mail_from`` is "" for the null sender)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    peer: tuple[str, int] | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        """The message parsed with the modern email policy (headers decoded)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class _Handler:
    """aiosmtpd handler: accept everything, keep a copy."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        peer = session.peer if isinstance(session.peer, tuple) else None
        self._sink._record(
            Delivered(
                # "<>" (bounces) is recorded as "", the null reverse-path.
                mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                mail_options=tuple(envelope.mail_options),
                rcpt_options=tuple(envelope.rcpt_options),
                peer=(str(peer[0]), int(peer[1])) if peer else None,
            )
        )
        return "250 2.0.0 OK: recorded by sink"


class _SinkSMTP(SMTP):
    """Accepts long lines: a sink records what the MTA sent, it must not judge it."""

    line_length_limit = 1 << 20


class _SinkController(Controller):
    def factory(self) -> SMTP:
        return _SinkSMTP(self.handler, **self.SMTP_kwargs)


class SmtpSink(Service):
    """A threaded aiosmtpd server recording deliveries; thread-safe ``wait_for``/``clear``."""

    def __init__(
        self,
        port: int | None = None,
        *,
        data_size_limit: int = DEFAULT_DATA_SIZE_LIMIT,
        hostname: str = "sink.sendwarden.test",
    ) -> None:
        self.host = "127.0.0.1"
        self.port: int = port if port is not None else free_port()
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self._messages: list[Delivered] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {
            "data_size_limit": self.data_size_limit,
            "enable_SMTPUTF8": True,
            "decode_data": False,
        }
        controller = _SinkController(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname=self.hostname,
            ready_timeout=10.0,
            **kwargs,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def messages(self) -> list[Delivered]:
        """A snapshot of everything received so far, oldest first."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Delivered]:
        """Wait until at least ``count`` messages arrived; return them all.

        Raises TimeoutError naming how many did arrive, so a test failure says whether the
        mail was lost or merely slow.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"sink got {len(self._messages)} message(s), expected {count} "
                        f"within {timeout:.1f}s"
                    )
                self._cond.wait(remaining)
            return list(self._messages)

    def _record(self, delivered: Delivered) -> None:
        with self._cond:
            self._messages.append(delivered)
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<SmtpSink 127.0.0.1:{self.port} messages={len(self._messages)}>"


class SinkProcess(ProcessService):
    """Postfix's own ``smtp-sink``: accepts and discards everything, in its own process.

    For benchmarks, where the in-process :class:`SmtpSink` would share the measuring
    process's CPU and GIL; it records nothing (tests that check what was delivered use
    :class:`SmtpSink`).
    """

    log_name = "smtp-sink output"

    def __init__(self, port: int | None = None, *, backlog: int = 256) -> None:
        self.port: int = port if port is not None else free_port()
        self.backlog = backlog
        self.start_timeout = 10.0
        self.root = Path(tempfile.mkdtemp(prefix="sw-sink-"))
        self.log_path = self.root / "smtp-sink.log"

    def start(self) -> SinkProcess:
        if self.running:
            return self
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        # -u: smtp-sink refuses to keep running as root.
        argv = [binary, "-u", "nobody", f"127.0.0.1:{self.port}", str(self.backlog)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready(
            lambda: wait_for_tcp("127.0.0.1", self.port, 0.2),
            lambda: RuntimeError(f"smtp-sink did not listen on {self.port}:\n{self.log()}"),
            interval=0.02,
        )
        return self

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 5.0)
