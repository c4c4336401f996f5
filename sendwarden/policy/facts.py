"""The facts a message is judged on, gathered by adapters before the core decides."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from sendwarden.config import Account

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Client:
    """The SMTP client, or the local submission pseudo-client of sendmail(1)."""

    address: IPAddress | None
    hostname: str = ""
    port: int = 0
    local_submission: bool = False  # sendmail(1)/pickup via non_smtpd_milters

    def __str__(self) -> str:
        if self.local_submission:
            return "local submission (sendmail)"
        return f"{self.hostname or 'unknown'}[{self.address or 'unknown'}]"


@dataclass(slots=True)
class MessageChanges:
    """Edits a check asks for at end of message; the adapter applies them only when
    the message is accepted (headers are added/removed, recipients dropped)."""

    add_headers: list[tuple[str, str]] = field(default_factory=list)  # prepended, in order
    remove_headers: list[tuple[str, int]] = field(default_factory=list)  # (name, 1-based index)
    remove_recipients: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Transaction:
    """One message's facts as they arrive. Rules read it; only adapters write it.

    ``scratch`` holds per-message working state of the checks (keyed by check
    name), because check objects are shared between concurrent connections.
    """

    client: Client
    trusted: bool = False
    login: str | None = None
    uid: int | None = None
    queue_id: str = ""  # the MTA's, once it has one (Postfix: often only after a RCPT)
    session: str = ""  # this SMTP session's id: every decision line of it carries it
    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    account: Account | None = None
    # How the sender proved who it is (policy.accounts.Proof): login, uid, network,
    # trusted-network, local; '' for a stranger (no account: nothing is spent or struck).
    account_source: str = ""
    scratch: dict[str, Any] = field(default_factory=dict)
    changes: MessageChanges = field(default_factory=MessageChanges)
    # Distinct recipients of the account in the past hour before this message, when a
    # store round trip already counted them and recorded this message's (the rate
    # limit's end-of-message one does, for the consent rule); None: not counted yet.
    recent_recipients: int | None = None

    @property
    def account_id(self) -> str | None:
        return self.account.id if self.account else None

    @property
    def identified(self) -> bool:
        """Whether the sender proved who it is (SASL, a local submission, or an account's
        own network); a trusted-network host is ``trusted`` instead."""
        return self.login is not None or self.account_source in ("login", "uid", "network", "local")

    def header_values(self, name: str) -> list[str]:
        """All values of a header field, case-insensitively, in message order."""
        wanted = name.lower()
        return [value for field_name, value in self.headers if field_name.lower() == wanted]
