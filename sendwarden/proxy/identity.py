"""Who sent a message, as the MTA proved it, carried to the proxy where no customer can
write it.

Exim: the proxy transport logs in to the proxy with the shared secret (SMTP AUTH), and
``authenticated_sender_force`` makes Exim send, on every MAIL, an ``AUTH=`` parameter
built from what Exim itself recorded::

    sendwarden1;$received_protocol;${str2b64:$authenticated_id};$originator_uid;$sender_host_address

The customer cannot write it: what a client puts in its own ``AUTH=`` is replaced by the
forced value, and a process that reaches the proxy without the secret is refused before
MAIL. Only a logged-in MTA's ``AUTH=`` is read; anything else is refused (451: the mail
waits in the MTA's queue, nothing passes unattributed).

Postfix (``smtpd_proxy_filter``): smtpd announces the client with XFORWARD, and writes
its own Received header as the first line of DATA, naming the SASL login when
``smtpd_sasl_authenticated_header = yes``. The proxy listens where only Postfix reaches
it (a unix socket its group owns, or see docs/exim.md), so the first header is Postfix's.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from sendwarden.policy.facts import IPAddress

TAG = "sendwarden1"


class IdentityError(ValueError):
    """The identity the MTA sent cannot be read."""


@dataclass(frozen=True, slots=True)
class ProvenIdentity:
    """What the MTA proved: at most one of login (SMTP AUTH) and uid (local
    submission); the client address of an SMTP client."""

    login: str | None = None
    uid: int | None = None
    address: IPAddress | None = None
    protocol: str = ""

    @property
    def local(self) -> bool:
        return self.uid is not None


def xtext_decode(text: str) -> str:
    """RFC 3461 xtext: ``+XX`` is the byte XX."""
    try:
        return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    except ValueError as error:  # pragma: no cover - the pattern only matches hex
        raise IdentityError(str(error)) from None


def parse_exim_identity(auth_param: str) -> ProvenIdentity:
    """The identity of an ``AUTH=`` value Exim built (see the module text)."""
    fields = xtext_decode(auth_param).strip("<>").split(";")
    if len(fields) != 5 or fields[0] != TAG:
        raise IdentityError(f"not a {TAG} identity: {auth_param[:80]!r}")
    _, protocol, login64, uid_text, address_text = fields
    protocol = protocol.lower()
    address = _address(address_text)
    if protocol.startswith("local"):
        # sendmail(1), PHP mail(), cron: the uid Exim recorded for its caller.
        if not uid_text.isdigit():
            raise IdentityError(f"local submission without a caller uid: {uid_text!r}")
        return ProvenIdentity(uid=int(uid_text), protocol=protocol)
    if protocol.endswith("a") and "smtp" in protocol:  # esmtpa, esmtpsa, utf8esmtpsa...
        try:
            login = base64.b64decode(login64, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise IdentityError(f"unreadable login: {error}") from None
        if not login:
            raise IdentityError("authenticated protocol without a login")
        return ProvenIdentity(login=login, address=address, protocol=protocol)
    if "smtp" not in protocol:
        raise IdentityError(f"unknown protocol {protocol!r}")
    return ProvenIdentity(address=address, protocol=protocol)


_RECEIVED_AUTH = re.compile(r"\(Authenticated sender: ([^\s()]+)\)")


def postfix_login(first_header: tuple[str, str] | None) -> str | None:
    """The SASL login in Postfix smtpd's own Received header (the first header it sends
    a before-queue proxy), or None when that header names none."""
    if first_header is None or first_header[0].lower() != "received":
        return None
    value = first_header[1]
    if "(Postfix)" not in value:
        return None
    match = _RECEIVED_AUTH.search(value)
    return match.group(1) if match else None


def _address(text: str) -> IPAddress | None:
    text = text.strip().strip("[]")
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.removeprefix("IPv6:"))
    except ValueError:
        raise IdentityError(f"bad client address {text!r}") from None
