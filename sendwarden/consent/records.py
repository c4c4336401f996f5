"""Turning what people type (a CSV row, CLI options) into a valid ledger event. PURE.

One validator for every way records get in, so an imported row and a staff grant
obey the same rules and fail with the same words.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sendwarden.addresses import split_address
from sendwarden.consent.model import EventKind, NewEvent
from sendwarden.policy.consent import normalise_list_id

GRANT_METHODS = ("single-opt-in", "double-opt-in", "import", "in-person")
REVOKE_METHODS = ("unsubscribe-link", "one-click", "reply", "complaint", "staff", "import")
METHODS: dict[EventKind, tuple[str, ...]] = {
    EventKind.GRANTED: GRANT_METHODS,
    EventKind.REVOKED: REVOKE_METHODS,
    EventKind.REFUSED: ("in-person", "reply", "staff", "import"),
}
#: Method recorded when a row leaves it empty: the customer imported it, nothing more known.
DEFAULT_METHOD = "import"
#: Clocks disagree a little; a time further ahead than this is a mistake in the data.
CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)

#: Record fields, in the documented CSV column order. ``occurred_at`` may also be
#: spelled ``consented_at``.
FIELDS = (
    "recipient", "occurred_at", "kind", "method", "source", "ip",
    "confirmed_at", "evidence", "list_id",
)  # fmt: skip
REQUIRED = ("recipient", "occurred_at")
ALIASES = {"consented_at": "occurred_at"}


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # a host name label, A-label form
_MAIL_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
_BAD_LOCAL_PART = re.compile(r"[\s<>,]")


class RecordError(ValueError):
    """A record that cannot go into the ledger; the message says why, for a person."""


def parse_time(value: str, name: str) -> datetime:
    """ISO 8601 (``2026-03-01T10:15:02Z``, ``2026-03-01 10:15:02+02:00``, ``2026-03-01``);
    a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RecordError(
            f"{name} {value!r} is not a valid ISO 8601 time (e.g. 2026-03-01T10:15:02Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def normalise_recipient(value: str) -> str:
    """``local@domain`` with the domain lower-cased and IDNA-encoded; RecordError otherwise."""
    text = value.strip()
    local, domain = split_address(text)
    if domain is not None and domain.startswith("["):
        raise RecordError(f"recipient {value!r}: use a domain name, not an address literal")
    if (
        domain is None
        or not local
        or _BAD_LOCAL_PART.search(local)
        or not _MAIL_DOMAIN.fullmatch(domain)
    ):
        raise RecordError(f"recipient {value!r} is not an email address with a valid domain")
    return f"{local}@{domain}"


def canonical_ip(text: str) -> str:
    """The standard spelling of an IPv4 or IPv6 address (C-speed: imports check millions)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, text))
        except OSError:
            continue
    raise RecordError(f"ip {text!r} is not an IP address")


def build_event(
    record: Mapping[str, str], *, account: str, recorded_by: str, now: datetime
) -> NewEvent:
    """A validated event from text fields named as in :data:`FIELDS` (missing = empty)."""

    get = record.get

    def text(name: str) -> str:
        return (get(name) or "").strip()

    recipient = text("recipient")
    if not recipient:
        raise RecordError("recipient is empty")
    address = normalise_recipient(recipient)
    kind_text = text("kind").lower() or EventKind.GRANTED.value
    try:
        kind = EventKind(kind_text)
    except ValueError:
        choices = ", ".join(kind.value for kind in EventKind)
        raise RecordError(f"kind {kind_text!r} is not one of {choices}") from None
    if not text("occurred_at"):
        raise RecordError("occurred_at (when it happened) is empty")
    occurred_at = parse_time(text("occurred_at"), "occurred_at")
    confirmed_at = (
        parse_time(text("confirmed_at"), "confirmed_at") if text("confirmed_at") else None
    )
    method = text("method").lower() or DEFAULT_METHOD
    if method not in METHODS[kind]:
        raise RecordError(
            f"method {method!r} is not a way to record {kind.value} consent "
            f"(use one of {', '.join(METHODS[kind])})"
        )
    _check_times(occurred_at, confirmed_at, now)
    if confirmed_at is not None and kind is not EventKind.GRANTED:
        raise RecordError("confirmed_at only belongs to a granted record")
    if method == "double-opt-in" and confirmed_at is None:
        raise RecordError("double-opt-in needs confirmed_at (when the confirmation came back)")
    ip = text("ip")
    if ip:
        ip = canonical_ip(ip)
    return NewEvent(
        account=account,
        recipient=address,
        kind=kind,
        occurred_at=occurred_at,
        recorded_by=recorded_by,
        list_id=normalise_list_id(text("list_id")),  # the form the milter compares
        method=method,
        source=text("source"),
        ip=ip,
        confirmed_at=confirmed_at,
        evidence=text("evidence"),
    )


def _check_times(occurred_at: datetime, confirmed_at: datetime | None, now: datetime) -> None:
    for name, moment in (("occurred_at", occurred_at), ("confirmed_at", confirmed_at)):
        if moment is None:
            continue
        if moment > now + CLOCK_SKEW:
            raise RecordError(f"{name} {moment:%Y-%m-%d %H:%M:%SZ} is in the future")
        if moment < EARLIEST:
            raise RecordError(f"{name} {moment:%Y-%m-%d} is before 1990; check the date")
    if confirmed_at is not None and confirmed_at < occurred_at:
        raise RecordError("confirmed_at is before occurred_at (confirmed before signing up?)")
