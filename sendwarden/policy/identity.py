"""No forged sender, no impersonation (AUP: "forging of message header information",
"impersonating any person, organisation, or entity").

Pure rules over the headers the MTA passed to the milter. For a listed account the
envelope sender, every From address, the Sender address, and any address a From or
Sender display name (or comment) shows must be in a domain the account owns. A proven
sender no account lists may use its login's own domain when it has one (any domain
when it has none), and never another customer's. Headers that
cannot be read are refused rather than guessed at: a check that a lenient parser can
be talked out of is no check.
"""

from __future__ import annotations

import functools
import re
import typing
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email.header import decode_header
from email.headerregistry import AddressHeader, HeaderRegistry

from sendwarden.addresses import domain_matches, normalise_domain, split_address
from sendwarden.config import Account
from sendwarden.policy.accounts import AccountDirectory, is_listed
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE_FORGED_SENDER = "forged-sender"
RULE_IMPERSONATION = "impersonation"
RULE_MALFORMED = "malformed-header"

_REGISTRY = HeaderRegistry()
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Something that reads as an address to a person: text@domain.tld, after NFKC folding
# (so full-width U+FF20 '@' and U+FF0E '.' count) and RFC 2047 decoding.
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\]{},;:\"'@]+@([^\s<>()\[\]{},;:\"'@]+)")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes pymilter could not decode (surrogateescape)
# SMTPUTF8 local parts are fine, and so are sloppy encoded words (common in the wild, and
# the decoded display name is checked anyway); defects in the address structure are not.
_TOLERATED_DEFECTS = (email_errors.NonASCIILocalPartDefect,)
_TOLERATED_ENCODING_DEFECTS = (
    "encoded word inside quoted string",
    "missing trailing whitespace after encoded-word",
    "missing whitespace before encoded word",
)
_MAX_DOMAINS_SHOWN = 3


class MalformedHeader(ValueError):
    """An identity header that cannot be read reliably; the message says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One parsed address: the decoded display name and the address with its domain
    in lower-case IDNA form, so ``Bücher.example`` and ``xn--bcher-kva.example`` match."""

    display_name: str
    address: str
    domain: str


@dataclass(frozen=True, slots=True)
class ShownAddress:
    """Address-like text inside a display name or comment: what the reader sees."""

    header: str
    text: str
    domain: str


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """The From and Sender headers of a message, parsed and checked for shape."""

    from_mailboxes: tuple[Mailbox, ...]
    sender: Mailbox | None
    shown: tuple[ShownAddress, ...]


# -- parsing ----------------------------------------------------------------------


def decode_words(value: str) -> str:
    """The header text a mail client would show: RFC 2047 encoded words decoded
    everywhere (also inside quotes and comments, where some clients decode them),
    then NFKC-folded so look-alike characters (full-width at sign and full stop)
    become plain ones."""
    parts: list[str] = []
    for chunk, charset in decode_header(_FOLD.sub("", value)):
        if isinstance(chunk, str):
            parts.append(chunk)
            continue
        try:
            parts.append(chunk.decode(charset or "raw-unicode-escape", "replace"))
        except LookupError:  # an unknown charset: still show something to check
            parts.append(chunk.decode("latin-1"))
    return unicodedata.normalize("NFKC", "".join(parts))


@functools.lru_cache(maxsize=4096)
def parse_mailboxes(name: str, value: str) -> tuple[Mailbox, ...]:
    """The mailboxes of an address header; MalformedHeader when it is not a clean list
    of ``name <local@domain>`` mailboxes (the stdlib parser is lenient, this is not).

    Cached: the stdlib parser costs most of a millisecond, and a customer's mail
    repeats the same From header message after message."""
    unfolded = _FOLD.sub("", value).strip()
    if _NOT_UTF8.search(unfolded):
        raise MalformedHeader(f"the {name} header contains bytes that are not valid UTF-8")
    if not unfolded:
        raise MalformedHeader(f"the {name} header is empty")
    try:
        parsed_header = _REGISTRY(name, unfolded)
        defects = parsed_header.defects
        groups = typing.cast(AddressHeader, parsed_header).groups
        addresses = typing.cast(AddressHeader, parsed_header).addresses
    except Exception:  # the stdlib parser raises IndexError, ValueError... on hostile input
        raise MalformedHeader(
            f"the {name} header cannot be parsed ({_excerpt(unfolded)})"
        ) from None
    if not all(_tolerated(defect) for defect in defects):
        raise MalformedHeader(f"the {name} header cannot be parsed ({_excerpt(unfolded)})")
    if any(group.display_name is not None for group in groups):
        raise MalformedHeader(f"the {name} header names a group, not a mailbox")
    mailboxes: list[Mailbox] = []
    for address in addresses:
        if not address.username or not address.domain:
            raise MalformedHeader(
                f"the {name} header has an address without a domain ({_excerpt(unfolded)})"
            )
        try:
            domain = normalise_domain(address.domain)
        except ValueError:
            raise MalformedHeader(
                f"the {name} header has an invalid domain ({_excerpt(address.domain)})"
            ) from None
        mailboxes.append(Mailbox(address.display_name, f"{address.username}@{domain}", domain))
    if not mailboxes:
        raise MalformedHeader(f"the {name} header has no address")
    return tuple(mailboxes)


def _tolerated(defect: email_errors.MessageDefect) -> bool:
    return isinstance(defect, _TOLERATED_DEFECTS) or str(defect).startswith(
        _TOLERATED_ENCODING_DEFECTS
    )


@functools.lru_cache(maxsize=4096)
def shown_addresses(name: str, value: str) -> tuple[ShownAddress, ...]:
    """Address-like text anywhere in a header as a reader sees it (display names,
    comments, encoded words included). Only text@domain.tld counts: 'Team @ Acme' is
    a name, not an address."""
    found: list[ShownAddress] = []
    for match in _ADDRESS_LIKE.finditer(decode_words(value)):
        try:
            domain = normalise_domain(match.group(1).rstrip("."))
        except ValueError:
            continue
        if "." in domain:
            found.append(ShownAddress(name, match.group(0).rstrip("."), domain))
    return tuple(found)


def read_identity(headers: Sequence[tuple[str, str]]) -> IdentityHeaders:
    """Exactly one From with one or more mailboxes, at most one Sender with one."""
    from_values = _values(headers, "from")
    if not from_values:
        raise MalformedHeader("the message has no From header")
    if len(from_values) > 1:
        raise MalformedHeader(
            f"the message has {len(from_values)} From headers; it must have exactly one"
        )
    sender_values = _values(headers, "sender")
    if len(sender_values) > 1:
        raise MalformedHeader(
            f"the message has {len(sender_values)} Sender headers; it may have at most one"
        )
    from_mailboxes = parse_mailboxes("From", from_values[0])
    shown = shown_addresses("From", from_values[0])
    sender = None
    if sender_values:
        sender_mailboxes = parse_mailboxes("Sender", sender_values[0])
        if len(sender_mailboxes) > 1:
            raise MalformedHeader("the Sender header must name exactly one address")
        sender = sender_mailboxes[0]
        shown += shown_addresses("Sender", sender_values[0])
    return IdentityHeaders(from_mailboxes, sender, shown)


# -- ownership --------------------------------------------------------------------


def account_owns(account: Account, domain: str) -> bool:
    """Whether a normalised domain is one of the account's (or, when the account
    allows subdomains, a subdomain of one)."""
    return any(
        domain_matches(domain, owned, subdomains=account.allow_subdomains)
        for owned in account.domains
    )


def identity_verdict(
    txn: Transaction,
    directory: AccountDirectory,
    *,
    provider_hostnames: Collection[str] = (),
) -> Verdict | None:
    """550 5.7.1 at end of message when the sender's identity is not its own.

    Applies to outbound mail only (a proven sender: logged in, local, an account's
    network or a trusted network); mail from the internet to the provider's own
    domains is SPF/DMARC's business.
    """
    account = txn.account
    if account is None or not (txn.identified or txn.trusted):
        return None
    try:
        identity = read_identity(txn.headers)
    except MalformedHeader as error:
        return malformed_verdict(txn, str(error))
    if is_listed(account):
        return _own_identity_verdict(txn, account, identity, provider_hostnames)
    return _unlisted_identity_verdict(txn, account, identity, directory, provider_hostnames)


def malformed_verdict(txn: Transaction, problem: str) -> Verdict:
    return reject(
        RULE_MALFORMED,
        "550",
        "5.7.1",
        f"Malformed message header from {account_label(txn.account_id)}: {problem}. "
        "Send the message with exactly one From header holding one of your own addresses.",
    )


def _own_identity_verdict(
    txn: Transaction,
    account: Account,
    identity: IdentityHeaders,
    provider_hostnames: Collection[str],
) -> Verdict | None:
    sender_domain = split_address(txn.mail_from)[1]
    if txn.mail_from and not (
        sender_domain is not None
        and (
            account_owns(account, sender_domain)
            # sendmail(1) without -f makes up user@myhostname: the MTA's own domain.
            or (txn.client.local_submission and sender_domain in provider_hostnames)
        )
    ):
        return _not_owned(account, f"the envelope sender (MAIL FROM) {txn.mail_from}")
    for mailbox in identity.from_mailboxes:
        if not account_owns(account, mailbox.domain):
            return _not_owned(account, f"the From header address {mailbox.address}")
    if identity.sender is not None and not account_owns(account, identity.sender.domain):
        return _not_owned(account, f"the Sender header address {identity.sender.address}")
    for shown in identity.shown:
        if not account_owns(account, shown.domain):
            return reject(
                RULE_IMPERSONATION,
                "550",
                "5.7.1",
                f"Impersonation refused: the {shown.header} header's display name shows "
                f"the address {_shown_text(shown)}, which is not in a domain of account "
                f"{account.id} ({_domain_list(account)}). Use a display name that does "
                "not show someone else's address.",
            )
    return None


def _unlisted_identity_verdict(
    txn: Transaction,
    account: Account,
    identity: IdentityHeaders,
    directory: AccountDirectory,
    provider_hostnames: Collection[str],
) -> Verdict | None:
    """A proven sender no account lists: never a customer's domain; a login's own
    domain (the unlisted account's ``domains``) when it has one, else any other."""
    sender_domain = split_address(txn.mail_from)[1]
    claims = []
    if txn.mail_from and not (txn.client.local_submission and sender_domain in provider_hostnames):
        claims.append(("the envelope sender (MAIL FROM)", txn.mail_from, sender_domain))
    claims += [
        ("the From header address", mailbox.address, mailbox.domain)
        for mailbox in identity.from_mailboxes
    ]
    if identity.sender is not None:
        claims.append(
            ("the Sender header address", identity.sender.address, identity.sender.domain)
        )
    claims += [
        (f"the {shown.header} header's display name address", _shown_text(shown), shown.domain)
        for shown in identity.shown
    ]
    for what, address, domain in claims:
        if domain is None or directory.owner_of_domain(domain) is not None:
            return reject(
                RULE_IMPERSONATION,
                "550",
                "5.7.1",
                f"Impersonation refused: {what} {address} is "
                + ("not a usable address" if domain is None else "in a domain of another "
                   "customer of this provider")
                + f", and {_unlisted_label(txn, account)} is not that customer. Log in "
                "(SMTP AUTH) with the account that owns the domain.",
            )  # fmt: skip
        if account.domains and not account_owns(account, domain):
            return _not_owned(account, f"{what} {address}")
    return None


def _unlisted_label(txn: Transaction, account: Account) -> str:
    return f"the login {txn.login}" if txn.login else f"sender {account.id} (no account)"


def _not_owned(account: Account, what: str) -> Verdict:
    return reject(
        RULE_FORGED_SENDER,
        "550",
        "5.7.1",
        f"Forged sender refused: {what} is not in a domain of account {account.id} "
        f"({_domain_list(account)}). Send only from addresses in your own domains.",
    )


def _domain_list(account: Account) -> str:
    if not account.domains:
        return "it has no sender domains configured"
    shown = ", ".join(account.domains[:_MAX_DOMAINS_SHOWN])
    more = len(account.domains) - _MAX_DOMAINS_SHOWN
    suffix = " and their subdomains" if account.allow_subdomains else ""
    return f"its domains: {shown}{f' and {more} more' if more > 0 else ''}{suffix}"


def _shown_text(shown: ShownAddress) -> str:
    """Replies are ASCII: show an internationalised domain in its IDNA form too."""
    return shown.text if shown.text.isascii() else f"{shown.text} ({shown.domain})"


def _values(headers: Sequence[tuple[str, str]], wanted: str) -> list[str]:
    return [value for name, value in headers if name.lower() == wanted]


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
