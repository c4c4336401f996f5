"""The way back into the MTA: SMTP connections to the next hop, shared by the proxy's
connections through a small pool (Exim's return port forks a process for each
connection it accepts: one per message would double the cost of the way back). The
proxy answers the MTA with the next hop's own reply, so it says 250 only once the next
hop has the message (the proxy keeps no queue); DSN parameters pass."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import smtplib
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MECHANISM = "X-SENDWARDEN"
#: Messages per next-hop connection: Exim queues (instead of delivering at once) what
#: comes after smtp_accept_queue_per_connection (10 by default) messages on one connection.
MESSAGES_PER_CONNECTION = 10
#: Idle connections kept, and for how long: each holds one of the next hop's processes.
MAX_IDLE = 4
IDLE_SECONDS = 5.0
QUIT_TIMEOUT = 1.0  # seconds for the next hop's 221 (the message is already handed over)
_LEADING_DOT = re.compile(rb"(?m)^\.")
NEXT_HOP_DOWN = "451 4.4.1 The policy proxy cannot reach the next hop; please try again later."


@dataclass
class Outgoing:
    """One message to relay: envelope with the parameters that must pass on."""

    mail_from: str
    mail_params: list[str] = field(default_factory=list)
    recipients: list[tuple[str, list[str]]] = field(default_factory=list)
    data: bytes = b""


@dataclass(frozen=True)
class NextHop:
    host: str
    port: int
    login: str = ""
    secret: str = ""
    timeout: float = 300.0
    helo: str = "sendwarden-proxy"
    # Exim's return port: X-SENDWARDEN (see deploy/exim); Postfix's reinjection smtpd:
    # PLAIN, against a SASL user that holds the secret. Same initial response.
    mechanism: str = MECHANISM


class Relay:
    """A lazily opened, reused SMTP connection to the next hop. Used from one thread at
    a time (the proxy connection's steps are sequential)."""

    def __init__(self, hop: NextHop) -> None:
        self.hop = hop
        self._client: smtplib.SMTP | None = None
        self.sent = 0  # messages on the current connection
        self.waits_for_text = False  # after the next hop's 354: only the text may follow

    @property
    def connected(self) -> bool:
        return self._client is not None

    def send(self, message: Outgoing) -> str:
        """The next hop's reply to the message, as one SMTP reply line."""
        return self._attempts(message, whole=True) or NEXT_HOP_DOWN  # never None

    def begin(self, envelope: Outgoing) -> str | None:
        """The envelope ahead of the text, while the MTA is still sending it to us:
        ``None`` once the next hop waits for the text (its 354), else the reply the
        whole message gets (a refused sender or recipient, the next hop unreachable).
        Then :meth:`finish`, or :meth:`RelayPool.release` to give up (nothing was
        delivered: the connection is dropped before a final dot)."""
        return self._attempts(envelope, whole=False)

    def finish(self, data: bytes) -> str | None:
        """After :meth:`begin`: the text, and the next hop's reply to it; ``None`` if
        the connection was lost before a reply (the next hop has nothing: send the
        message again on another connection)."""
        client = self._client
        if client is None or not self.waits_for_text:
            return None
        try:
            return self._text(client, data)
        except (OSError, smtplib.SMTPException) as error:
            self.close()
            log.warning("next hop %s:%d: %s", self.hop.host, self.hop.port, error)
            return None

    def send_text(self, data: bytes) -> bool:
        """After :meth:`begin`: the text and its final dot only; :meth:`reply` reads
        the answer. ``False`` if the connection was lost (nothing was delivered)."""
        client = self._client
        if client is None or not self.waits_for_text:
            return False
        self.waits_for_text = False  # whatever comes now, no RSET or QUIT may follow
        try:
            client.send(_dot_terminated(data))
        except (OSError, smtplib.SMTPException) as error:
            self._drop(error)
            return False
        return True

    async def reply(self) -> str | None:
        """After :meth:`send_text`, on the event loop: the next hop's reply to the
        text. No worker thread waits while the next hop writes its spool copy, and
        none has to hand the reply back: the reply wakes the event loop, which passes
        it on at once. ``None`` if the connection was lost first (as :meth:`finish`).
        """
        client = self._client
        sock = client.sock if client is not None else None
        if sock is None:
            return None
        received = b""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)  # smtplib's buffered reader holds nothing now: the
        try:  # next hop says nothing between its 354 and its reply to the text
            while not _whole_reply(received):
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 8192), self.hop.timeout)
                if not chunk:
                    raise ConnectionError("the next hop closed the connection")
                received += chunk
        except (OSError, TimeoutError) as error:
            self._drop(error)
            return None
        except asyncio.CancelledError as error:  # the MTA is gone: its reply must not
            self._drop(error)  # be read by the next message on this connection
            raise
        sock.settimeout(self.hop.timeout)  # back to smtplib's blocking reads
        lines = [line.strip(b" \t\r") for line in received.rstrip(b"\r\n").split(b"\n")]
        try:
            code = int(lines[-1][:3])
        except ValueError:  # as smtplib reads a reply that is not one
            code = -1
        return _line(code, b"\n".join(line[4:] for line in lines))

    def _drop(self, error: BaseException) -> None:
        """The connection is unusable: closed without QUIT (no message is half sent)."""
        log.warning("next hop %s:%d: %s", self.hop.host, self.hop.port, error)
        client, self._client = self._client, None
        self.sent = 0
        self.waits_for_text = False
        if client is not None:
            client.close()

    def _attempts(self, message: Outgoing, whole: bool) -> str | None:
        self.sent += 1
        for attempt in (1, 2):  # a reused connection may have been closed meanwhile
            try:
                reply = self._begin_once(message)
                if reply is None and whole:
                    return self._text(self._connect(), message.data)
                return reply
            except (TimeoutError, smtplib.SMTPServerDisconnected, ConnectionError) as error:
                self.close()
                if attempt == 2:
                    log.warning("next hop %s:%d: %s", self.hop.host, self.hop.port, error)
            except (OSError, smtplib.SMTPException) as error:
                self.close()
                log.warning("next hop %s:%d: %s", self.hop.host, self.hop.port, error)
                break
        return NEXT_HOP_DOWN

    def _connect(self) -> smtplib.SMTP:
        if self._client is None:
            client = smtplib.SMTP(self.hop.host, self.hop.port, self.hop.helo,
                                  timeout=self.hop.timeout)  # fmt: skip
            try:
                client.ehlo(self.hop.helo)
                if self.hop.secret:
                    self._login(client)
            except BaseException:
                client.close()
                raise
            self._client = client
            self.sent = 1
        return self._client

    def _login(self, client: smtplib.SMTP) -> None:
        """``AUTH X-SENDWARDEN``: the proxy's own mechanism, offered only on Exim's return
        port (see deploy/exim), so no customer authenticator is ever involved; or
        ``AUTH PLAIN`` (the same initial response) to Postfix's reinjection smtpd."""
        token = base64.b64encode(f"\0{self.hop.login}\0{self.hop.secret}".encode()).decode()
        code, text = client.docmd("AUTH", f"{self.hop.mechanism} {token}")
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, text)

    def _begin_once(self, message: Outgoing) -> str | None:
        client = self._connect()
        # A message for one recipient sends DATA in the same write as MAIL and RCPT
        # (RFC 2920 lets DATA end a group): one round trip to the next hop less. Its
        # reply is 354 only if that recipient was accepted, so nothing is half sent.
        # With several, DATA waits for their replies: one refused recipient must stop
        # the whole message, and after a 354 only dropping the connection could.
        with_data = len(message.recipients) == 1 and client.has_extn("pipelining")
        (code, text), replies, data_reply = self._envelope(client, message, with_data)
        if code != 250:
            client.rset()
            return _line(code, text)
        refusals = [(code, text) for code, text in replies if code not in (250, 251)]
        if refusals:
            # One reply covers every recipient after DATA: any refused recipient makes
            # the whole message wait (4xx) or fail (5xx, only when all failed for good).
            client.rset()
            permanent = [r for r in refusals if r[0] >= 500]
            if len(permanent) == len(message.recipients):
                return _line(*permanent[0])
            temporary = [r for r in refusals if r[0] < 500]
            code, text = temporary[0] if temporary else (451, permanent[0][1])
            return _line(code, text)
        if data_reply is None:
            client.putcmd("data")
            data_reply = client.getreply()
        if data_reply[0] != 354:
            client.rset()
            return _line(*data_reply)
        self.waits_for_text = True
        return None

    def _text(self, client: smtplib.SMTP, data: bytes) -> str:
        self.waits_for_text = False  # whatever comes now, no RSET or QUIT may follow
        client.send(_dot_terminated(data))
        return _line(*client.getreply())

    def _envelope(
        self, client: smtplib.SMTP, message: Outgoing, with_data: bool = False
    ) -> tuple[tuple[int, bytes], list[tuple[int, bytes]], tuple[int, bytes] | None]:
        """The replies to MAIL, to each RCPT (none when MAIL was refused) and, when
        ``with_data``, to DATA. Sent together when the next hop announced PIPELINING
        (RFC 2920; Exim and Postfix do): one round trip instead of one per command."""
        mail_params = self._supported(client, message.mail_params)
        recipients = [(rcpt, self._supported(client, params))
                      for rcpt, params in message.recipients]  # fmt: skip
        if not client.has_extn("pipelining"):
            mail = client.mail(message.mail_from, mail_params)
            if mail[0] != 250:
                return mail, [], None
            return mail, [client.rcpt(rcpt, params) for rcpt, params in recipients], None
        if any(param.upper() == "SMTPUTF8" for param in mail_params):
            client.command_encoding = "utf-8"  # as smtplib's mail() does
        commands = [f"MAIL FROM:{smtplib.quoteaddr(message.mail_from)}{_options(mail_params)}"]
        commands += [f"RCPT TO:{smtplib.quoteaddr(rcpt)}{_options(params)}"
                     for rcpt, params in recipients]  # fmt: skip
        if any("\r" in command or "\n" in command for command in commands):
            # As smtplib's putcmd() refuses: a line break in an address or a parameter
            # would add a command of the sender's own to the authenticated return port.
            raise ValueError("command and arguments contain prohibited newline characters")
        if with_data:
            commands.append("DATA")
        client.send("".join(f"{command}\r\n" for command in commands))
        mail = client.getreply()
        replies = [client.getreply() for _ in recipients]  # 503s when MAIL was refused
        data = client.getreply() if with_data else None  # 354, or 503/554: no recipient
        return mail, replies if mail[0] == 250 else [], data

    @staticmethod
    def _supported(client: smtplib.SMTP, params: Sequence[str]) -> list[str]:
        """Parameters the next hop announced: DSN ones only to a DSN server."""
        dsn = client.has_extn("dsn")
        wanted = []
        for param in params:
            keyword = param.partition("=")[0].upper()
            if keyword in ("RET", "ENVID", "NOTIFY", "ORCPT") and not dsn:
                continue
            if keyword == "SMTPUTF8" and not client.has_extn("smtputf8"):
                continue
            if keyword == "BODY" and not client.has_extn("8bitmime"):
                continue
            wanted.append(param)
        return wanted

    def close(self) -> None:
        """QUIT together with our FIN, then the 221, as Exim's own smtp transport ends:
        Exim 4.94-4.98 holds its 221 back for 200 ms until the client has closed its
        side (Exim bug 3142, fixed in 4.99), which a plain ``quit()`` would wait out,
        holding a worker thread."""
        client, self._client = self._client, None
        self.sent = 0
        unfinished, self.waits_for_text = self.waits_for_text, False
        if client is None:
            return
        if unfinished:  # in the middle of DATA: dropped, the next hop keeps nothing
            client.close()
            return
        try:
            client.send("QUIT\r\n")
            if client.sock is not None:
                client.sock.shutdown(socket.SHUT_WR)
                client.sock.settimeout(QUIT_TIMEOUT)
            client.getreply()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            client.close()


class RelayPool:
    """Next-hop connections the proxy's connections take in turn, one message at a time:
    at most ``MESSAGES_PER_CONNECTION`` messages each, at most ``MAX_IDLE`` kept idle,
    for ``IDLE_SECONDS``."""

    def __init__(self, hop: NextHop) -> None:
        self.hop = hop
        self._lock = threading.Lock()
        self._idle: list[tuple[float, Relay]] = []  # (when it became idle, relay)
        self._closed = False

    def acquire(self) -> Relay:
        self.close_idle()
        with self._lock:
            if self._idle:
                return self._idle.pop()[1]
        return Relay(self.hop)

    def release(self, relay: Relay) -> None:
        """Back after a message: kept for the next one, or closed (also one that
        waits for a text that will not come)."""
        if not self.keep(relay):
            relay.close()

    def keep(self, relay: Relay) -> bool:
        """Back after a message if it can take the next one (never blocks); ``False``:
        the caller closes it."""
        if relay.connected and not relay.waits_for_text and relay.sent < MESSAGES_PER_CONNECTION:
            with self._lock:
                if not self._closed and len(self._idle) < MAX_IDLE:
                    self._idle.append((time.monotonic(), relay))
                    return True
        return False

    def close_idle(self, older_than: float = IDLE_SECONDS) -> None:
        deadline = time.monotonic() - older_than
        with self._lock:
            stale = [relay for since, relay in self._idle if since <= deadline]
            self._idle = [(since, relay) for since, relay in self._idle if since > deadline]
        for relay in stale:
            relay.close()

    def close(self) -> None:
        """No more connections kept (a reload or the end); those in use close on release."""
        with self._lock:
            self._closed = True
        self.close_idle(older_than=-1.0)


def _whole_reply(received: bytes) -> bool:
    """A whole SMTP reply: complete lines, the last without a continuation dash."""
    if not received.endswith(b"\n"):
        return False
    return received.rstrip(b"\r\n").rpartition(b"\n")[2][3:4] != b"-"


def _options(params: Sequence[str]) -> str:
    return "".join(f" {param}" for param in params)


def _dot_terminated(data: bytes) -> bytes:
    """The message as DATA sends it (what smtplib's ``data()`` does after the 354)."""
    stuffed = _LEADING_DOT.sub(b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _line(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"
