"""The way back into the MTA: one SMTP client per proxy connection, reused for its
messages. The proxy answers the MTA with the next hop's own reply, so it says 250 only
once the next hop has the message (the proxy keeps no queue); DSN parameters pass."""

from __future__ import annotations

import base64
import logging
import smtplib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MECHANISM = "X-SENDWARDEN"
QUIT_TIMEOUT = 1.0  # seconds for the next hop's 221 (the message is already handed over)
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


class Relay:
    """A lazily opened, reused SMTP connection to the next hop. Used from one thread at
    a time (the proxy connection's steps are sequential)."""

    def __init__(self, hop: NextHop) -> None:
        self.hop = hop
        self._client: smtplib.SMTP | None = None

    def send(self, message: Outgoing) -> str:
        """The next hop's reply to the message, as one SMTP reply line."""
        for attempt in (1, 2):  # a reused connection may have been closed meanwhile
            try:
                return self._send_once(message)
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
        return self._client

    def _login(self, client: smtplib.SMTP) -> None:
        """``AUTH X-SENDWARDEN``: the proxy's own mechanism, offered only on the return
        port (see deploy/exim), so no customer authenticator is ever involved."""
        token = base64.b64encode(f"\0{self.hop.login}\0{self.hop.secret}".encode()).decode()
        code, text = client.docmd("AUTH", f"{MECHANISM} {token}")
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, text)

    def _send_once(self, message: Outgoing) -> str:
        client = self._connect()
        code, text = client.mail(message.mail_from, self._supported(client, message.mail_params))
        if code != 250:
            client.rset()
            return _line(code, text)
        refusals: list[tuple[int, bytes]] = []
        for recipient, params in message.recipients:
            code, text = client.rcpt(recipient, self._supported(client, params))
            if code not in (250, 251):
                refusals.append((code, text))
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
        code, text = client.data(message.data)
        return _line(code, text)

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
        if client is None:
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


def _line(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"
