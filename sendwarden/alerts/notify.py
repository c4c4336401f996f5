"""How an alert reaches the abuse desk: mail, a JSON webhook (chat, ticketing), and
always the log. An alert counts as delivered only when every configured channel
took it; otherwise it is sent again on the next sweep (a duplicate is better than
a listing nobody heard of)."""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from sendwarden.alerts.rules import Alert
from sendwarden.config import AlertSettings, is_loopback
from sendwarden.policy.forged_headers import ALERT_HEADER

log = logging.getLogger(__name__)

#: Seconds a mail server or webhook may take before the channel counts as down.
CHANNEL_TIMEOUT = 10.0


class NotifyError(Exception):
    """A channel did not take the alert; the message says which and why."""


class Notifier(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; raise NotifyError when the channel did not take it."""


def alert_document(alert: Alert) -> dict[str, Any]:
    """The alert as one JSON object (the webhook body, ``--json`` output)."""
    finding = alert.finding
    return {
        "alert": alert.kind,
        "kind": finding.kind,
        "key": finding.key,
        "subject": alert.subject,
        "lines": list(finding.lines),
        "facts": dict(finding.facts),
        "since": iso_time(alert.since),
        "host": socket.getfqdn(),
    }


def alert_text(alert: Alert) -> str:
    """The alert as plain text (the mail body)."""
    lines = [alert.subject, ""]
    lines += alert.finding.lines
    lines += [
        "",
        f"First reported: {iso_time(alert.since)}",
        f"Reported by sendwarden on {socket.getfqdn()}",
    ]
    return "\n".join(lines) + "\n"


class LogNotifier:
    """Every alert as a warning in the log (journald), whatever else is configured."""

    name = "log"

    def send(self, alert: Alert) -> None:
        log.warning("ALERT %s: %s", alert.kind, alert.subject)


class MailNotifier:
    """One plain-text mail per alert to the abuse desk, through ``smtp_server``.

    With a login, the notifier authenticates (after STARTTLS when offered): the milter
    recognises sendwarden's own mail by that proven login, and only then does the mail
    carry the ``X-Sendwarden-Alert`` header, which the milter refuses from anyone else.
    Without one, the header is left out and the mail is an ordinary local submission.
    """

    name = "mail"

    def __init__(
        self,
        smtp_server: str,
        mail_from: str,
        mail_to: Sequence[str],
        login: str = "",
        password_file: str = "",
    ) -> None:
        host, _, port = smtp_server.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.mail_from = mail_from
        self.mail_to = tuple(mail_to)
        self.login = login
        self.password_file = password_file

    def _password(self) -> str:
        try:
            with open(self.password_file, encoding="utf-8") as file:
                return file.read().strip()
        except OSError as error:
            raise NotifyError(
                f"cannot read alerts.smtp_password_file {self.password_file}: {error.strerror}"
            ) from error

    def _authenticate(self, client: smtplib.SMTP) -> None:
        client.ehlo()
        if client.has_extn("starttls"):
            context = ssl.create_default_context()
            if is_loopback(self.host):  # this host's own MTA: nothing on the path to check
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo()
        client.login(self.login, self._password())

    def send(self, alert: Alert) -> None:
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(self.mail_to)
        message["Subject"] = f"[sendwarden] {alert.subject}"
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=self.mail_from.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
        if self.login:
            message[ALERT_HEADER] = f"{alert.kind}; {alert.finding.key}"
        message.set_content(alert_text(alert))
        try:
            with smtplib.SMTP(self.host, self.port, timeout=CHANNEL_TIMEOUT) as client:
                if self.login:
                    self._authenticate(client)
                refused = client.send_message(message, self.mail_from, list(self.mail_to))
        except (OSError, smtplib.SMTPException) as error:
            raise NotifyError(
                f"mail to {', '.join(self.mail_to)} via {self.host}:{self.port}: {error}"
            ) from error
        if refused:
            raise NotifyError(f"mail refused for {', '.join(sorted(refused))}")


class WebhookNotifier:
    """POSTs :func:`alert_document` as JSON; any 2xx answer is delivery."""

    name = "webhook"

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert_document(alert)).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "sendwarden-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=CHANNEL_TIMEOUT) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            raise NotifyError(f"webhook {self.url} answered {error.code} {error.reason}") from error
        except (OSError, ValueError) as error:
            raise NotifyError(f"webhook {self.url}: {error}") from error
        if not 200 <= status < 300:
            raise NotifyError(f"webhook {self.url} answered {status}")


def notifiers_from_settings(alerts: AlertSettings) -> list[Notifier]:
    notifiers: list[Notifier] = [LogNotifier()]
    if alerts.mail_to:
        notifiers.append(
            MailNotifier(
                alerts.smtp_server,
                alerts.mail_from,
                alerts.mail_to,
                alerts.smtp_login,
                alerts.smtp_password_file,
            )
        )
    if alerts.webhook_url:
        notifiers.append(WebhookNotifier(alerts.webhook_url))
    return notifiers


def deliver(alert: Alert, notifiers: Sequence[Notifier]) -> list[str]:
    """Send ``alert`` on every channel; the failures, in words (empty: delivered)."""
    failures = []
    for notifier in notifiers:
        try:
            notifier.send(alert)
        except NotifyError as error:
            failures.append(str(error))
    return failures


def iso_time(moment: float) -> str:
    """UTC, to the second, as alerts and ``alerts status`` show times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
