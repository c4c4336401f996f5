"""Bulk mail only to recipients who opted in, and always with a way out.

Pure rules: which messages count as bulk mail, and what to do when some of
their recipients have no active consent. The consent check gathers the facts
(the ledger's answer, the account's distinct recipients this hour) and asks here.

A message is bulk when any one signal says so: many recipients, mailing-list
headers (``List-Id``, ``List-Unsubscribe``, ``Precedence: bulk|list|junk``), or an
account that has already written to many different recipients this hour (a
campaign split into small messages). ``Feedback-ID`` is deliberately not a signal:
it is the sender's own label, which a hostile sender simply leaves out, and honest
senders put it on transactional mail too (docs/content-rules.md).

A ``List-Unsubscribe`` header only offers a way out when it holds a URI a mail
client can act on: ``mailto:`` with an address, or ``http(s)://`` with a host.

Consent only applies to outbound mail: inbound mail (an unidentified client
outside the trusted networks, which the relay rule confines to local domains) is
other people's mailing lists.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from sendwarden.addresses import normalise_address
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE_CONSENT = "bulk-consent"
RULE_UNSUBSCRIBE = "bulk-unsubscribe"
RULE_NO_ACCOUNT = "bulk-no-account"
REMOVED_HEADER = "X-Sendwarden-Removed-Recipients"
NAMED_IN_REPLY = 3  # recipients named in a refusal; the rest are counted
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
ONE_CLICK_POST = "list-unsubscribe=one-click"  # RFC 8058 List-Unsubscribe-Post value

MissingConsentAction = Literal["reject", "remove"]

_ANGLE_BRACKETED = re.compile(r"<([^<>]*)>")
#: An address of a mailto: URI: something, "@", a domain with no blanks or brackets.
_MAILTO_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\\\"]+@[^\s@<>()\[\],;:\\\"]+")


def is_outbound(txn: Transaction) -> bool:
    """Mail a customer sends out: logged in, a known local user or network, or trusted."""
    return txn.identified or txn.trusted


def normalise_list_id(value: str) -> str:
    """The list identifier of a ``List-Id`` value (RFC 2919), lower-cased.

    ``Acme News <news.acme.example>`` and ``news.acme.example`` are the same list,
    so the ledger, the API and the milter all compare this form.
    """
    bracketed = _ANGLE_BRACKETED.findall(value)
    identifier = bracketed[-1] if bracketed else value
    return identifier.strip().lower()


def usable_unsubscribe_uri(uri: str) -> bool:
    """Whether a mail client can act on the URI: a ``mailto:`` naming at least one
    address (``local@domain``), or an ``http(s)://`` URL with a host. ``<https:>``,
    ``<mailto:>``, ``<mailto:?subject=x>`` and ``<https:///path>`` are not."""
    scheme, colon, rest = uri.strip().partition(":")
    scheme = scheme.lower()
    if not colon:
        return False
    if scheme == "mailto":
        addresses = unquote(rest.partition("?")[0])
        return any(_MAILTO_ADDRESS.fullmatch(address.strip()) for address in addresses.split(","))
    if scheme in ("http", "https"):
        try:
            return bool(urlsplit(uri.strip()).hostname)
        except ValueError:  # a bad port or IPv6 literal: no client opens it
            return False
    return False


def unsubscribe_uris(value: str) -> list[str]:
    """The usable ``<mailto:...>`` / ``<http(s)://...>`` URIs of a List-Unsubscribe value."""
    uris = (uri.strip() for uri in _ANGLE_BRACKETED.findall(value))
    return [uri for uri in uris if usable_unsubscribe_uri(uri)]


def offered_unsubscribe_uris(txn: Transaction) -> list[str]:
    """Every URI the List-Unsubscribe headers name, usable or not (for the reply)."""
    return [
        uri.strip()
        for value in txn.header_values("List-Unsubscribe")
        for uri in _ANGLE_BRACKETED.findall(value)
    ]


def has_list_unsubscribe(txn: Transaction) -> bool:
    """Whether the message offers a way out that mail clients can show (RFC 2369)."""
    return any(unsubscribe_uris(value) for value in txn.header_values("List-Unsubscribe"))


def one_click_uri(txn: Transaction) -> str | None:
    """The https URI of an RFC 8058 one-click unsubscribe, or None: it needs
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` and a usable https URI."""
    posts = {"".join(value.split()).lower() for value in txn.header_values("List-Unsubscribe-Post")}
    if ONE_CLICK_POST not in posts:
        return None
    for value in txn.header_values("List-Unsubscribe"):
        for uri in unsubscribe_uris(value):
            if uri.lower().startswith("https:"):
                return uri
    return None


def list_id_of(txn: Transaction) -> str:
    """The message's list, or '' for mail not sent to a named list."""
    for value in txn.header_values("List-Id"):
        if list_id := normalise_list_id(value):
            return list_id
    return ""


def distinct_recipients(recipients: Sequence[str]) -> dict[str, str]:
    """Each different recipient once: normalised address -> the first spelling seen.
    Computed once per message; everything else works from it."""
    distinct: dict[str, str] = {}
    for recipient in recipients:
        distinct.setdefault(normalise_address(recipient), recipient)
    return distinct


def message_bulk_reasons(
    txn: Transaction, recipient_threshold: int, distinct_count: int | None = None
) -> list[str]:
    """Why the message itself looks like bulk mail, in words for the reply; [] if it doesn't.

    ``distinct_count`` is the number of different recipients, when the caller has it.
    ``Precedence: bulk`` on an RFC 3834 auto-reply (a vacation notice) does not
    make it bulk: autoresponders add it to keep other robots from answering.
    """
    reasons: list[str] = []
    count = distinct_count
    if count is None:
        count = len(distinct_recipients(txn.recipients))
    if count >= recipient_threshold:
        reasons.append(f"{count} recipients (bulk from {recipient_threshold})")
    for header in ("List-Id", "List-Unsubscribe"):
        if txn.header_values(header):
            reasons.append(f"a {header} header")
    auto_reply = any(
        value.strip().lower().startswith("auto-replied")
        for value in txn.header_values("Auto-Submitted")
    )
    precedence = {value.strip().lower() for value in txn.header_values("Precedence")}
    if precedence & BULK_PRECEDENCE and not auto_reply:
        reasons.append(f"Precedence: {sorted(precedence & BULK_PRECEDENCE)[0]}")
    return reasons


def campaign_reason(recent_distinct: int, limit: int) -> str | None:
    """The account already wrote to ``limit`` different recipients this hour."""
    if recent_distinct < limit:
        return None
    return (
        f"the account has written to about {recent_distinct} different recipients in the "
        f"last hour (bulk from {limit})"
    )


def _because(reasons: Sequence[str]) -> str:
    return "; ".join(reasons)


def no_account_verdict(txn: Transaction, reasons: Sequence[str]) -> Verdict:
    """Bulk mail from a trusted sender that belongs to no account: consent is recorded
    per account, so no recipient can have any; refused rather than waved through."""
    return reject(
        RULE_NO_ACCOUNT,
        "550",
        "5.7.1",
        f"Bulk mail from {txn.client} refused: the sender belongs to no hosting account, "
        "so no recipient's consent can be on record for it (it counts as bulk mail "
        f"because of {_because(reasons)}). Send bulk mail from your account's login.",
    )


def missing_unsubscribe_verdict(
    account_id: str | None, reasons: Sequence[str], offered: Sequence[str] = ()
) -> Verdict:
    """550 5.7.1: bulk mail must offer recipients a way to unsubscribe. ``offered``
    are the unusable URIs it did name, quoted so the sender sees what is wrong."""
    unusable = ""
    if offered:
        shown = ", ".join(f"<{_printable(uri)}>" for uri in offered[:NAMED_IN_REPLY])
        unusable = (
            f" (its List-Unsubscribe names no usable one: {shown}; a mailto: needs an "
            "address, an http(s) URL a host)"
        )
    return reject(
        RULE_UNSUBSCRIBE,
        "550",
        "5.7.1",
        f"Bulk mail from {account_label(account_id)} must carry a List-Unsubscribe header "
        "(RFC 8058 one-click recommended) with a mailto: or https: address"
        f"{unusable}; it counts as bulk mail because of {_because(reasons)}. Nothing was sent.",
    )


def _printable(text: str, limit: int = 80) -> str:
    """Sender text made safe for a reply line: no control characters, bounded."""
    return "".join(char if char.isprintable() else "?" for char in text[:limit])


def _named(recipients: Sequence[str]) -> str:
    shown = ", ".join(recipients[:NAMED_IN_REPLY])
    more = len(recipients) - NAMED_IN_REPLY
    return f"{shown} and {more} more" if more > 0 else shown


def missing_consent_verdict(
    account_id: str, lacking: Sequence[str], total: int, reasons: Sequence[str]
) -> Verdict:
    """550 5.7.1 naming how many recipients lack consent, and the first few of them."""
    return reject(
        RULE_CONSENT,
        "550",
        "5.7.1",
        f"Bulk mail from account {account_id} refused: {len(lacking)} of {total} recipients "
        f"have no active consent on record (never recorded, or unsubscribed): "
        f"{_named(lacking)}. It counts as bulk mail because of {_because(reasons)}. "
        "Record their opt-in with the consent API, or remove them from the mailing; "
        "nothing was sent.",
    )


@dataclass(frozen=True, slots=True)
class ConsentOutcome:
    """What to do with a bulk message once the ledger answered: refuse it, drop the
    recipients without consent (and say so in a header), or nothing at all."""

    verdict: Verdict | None = None
    remove: tuple[str, ...] = ()
    header: tuple[str, str] | None = None


def consent_outcome(
    account_id: str,
    distinct: Mapping[str, str],
    consenting: Collection[str],
    reasons: Sequence[str],
    on_missing: MissingConsentAction = "reject",
    envelope: Sequence[str] = (),
) -> ConsentOutcome:
    """Every recipient of bulk mail needs the account's active consent.

    ``distinct`` comes from :func:`distinct_recipients`; ``consenting`` holds the
    normalised addresses the ledger vouches for. In ``remove`` mode the recipients
    without consent are dropped (every envelope spelling of them, from ``envelope``),
    unless that would drop all of them: a message to nobody is refused instead, so
    the sender hears of it.
    """
    lacking = {
        address: spelled for address, spelled in distinct.items() if address not in consenting
    }
    if not lacking:
        return ConsentOutcome()
    if on_missing == "remove" and len(lacking) < len(distinct):
        drop = tuple(r for r in envelope if normalise_address(r) in lacking)
        count = len(lacking)
        noun = "recipient" if count == 1 else "recipients"
        return ConsentOutcome(
            remove=drop, header=(REMOVED_HEADER, f"{count} {noun} without consent")
        )
    return ConsentOutcome(
        verdict=missing_consent_verdict(account_id, list(lacking.values()), len(distinct), reasons)
    )
