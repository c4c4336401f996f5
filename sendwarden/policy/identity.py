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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email.headerregistry import AddressHeader, HeaderRegistry

from sendwarden.addresses import domain_matches, normalise_domain, split_address
from sendwarden.config import Account
from sendwarden.policy.accounts import AccountDirectory, is_listed
from sendwarden.policy.facts import Transaction
from sendwarden.policy.rendering import BidiControl, address_like, domain_skeleton, rendered
from sendwarden.policy.verdict import Verdict, account_label, reject

RULE_FORGED_SENDER = "forged-sender"
RULE_IMPERSONATION = "impersonation"
RULE_MALFORMED = "malformed-header"

_REGISTRY = HeaderRegistry()
_FOLD = re.compile(r"\r?\n(?=[ \t])")
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
    """Address-like text a reader sees in a sender header (display name, comment,
    encoded word, look-alike characters): its domain normalised, and the domain's
    confusable skeleton, which is what ownership is judged on."""

    header: str
    text: str
    domain: str
    look: str


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """The headers a mail client shows as the sender, parsed and checked for shape:
    From, Sender, and every Resent-From / Resent-Sender (``resent``, with the header
    name)."""

    from_mailboxes: tuple[Mailbox, ...]
    sender: Mailbox | None
    shown: tuple[ShownAddress, ...]
    resent: tuple[tuple[str, Mailbox], ...] = ()

    def addresses(self) -> list[tuple[str, Mailbox]]:
        """Every real address a reader is shown as the sender, with its header."""
        found = [("From", mailbox) for mailbox in self.from_mailboxes]
        if self.sender is not None:
            found.append(("Sender", self.sender))
        return found + list(self.resent)


# -- parsing ----------------------------------------------------------------------


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
    plain = plain_mailbox(unfolded)
    if plain is not None:
        return plain
    return _parse_with_stdlib(name, unfolded)


# The plainest mailbox a mail client writes, ``Name Words <local@domain>`` or
# ``local@domain`` in ASCII letters and digits (no quotes, comments, encoded words,
# dots in the name, domain literals or lists), which the stdlib parser (~150 us a
# value, once per distinct From) reads without a defect. Anything else, however
# harmless, goes to that parser: the differential test holds the two equal.
_WORD = "[A-Za-z0-9]+"
_LOCAL = "[A-Za-z0-9_+-]+(?:[.][A-Za-z0-9_+-]+)*"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = f"{_LABEL}(?:[.]{_LABEL})+"
_PLAIN_MAILBOX = re.compile(
    f"(?:(?:({_WORD}(?: {_WORD})*) )?<({_LOCAL})@({_DOMAIN})>)|({_LOCAL})@({_DOMAIN})"
)


def plain_mailbox(unfolded: str) -> tuple[Mailbox, ...] | None:
    """The one mailbox of a plain header value (unfolded and stripped), as the stdlib
    parser reads it; None for anything else (then the stdlib parser decides)."""
    match = _PLAIN_MAILBOX.fullmatch(unfolded)
    if match is None:
        return None
    display_name, local, domain, bare_local, bare_domain = match.groups()
    if bare_local is not None:
        display_name, local, domain = "", bare_local, bare_domain
    try:
        normalised = normalise_domain(domain)
    except ValueError:
        return None  # refused by the stdlib path, with its message
    return (Mailbox(display_name or "", f"{local}@{normalised}", normalised),)


def _parse_with_stdlib(name: str, unfolded: str) -> tuple[Mailbox, ...]:
    """:func:`parse_mailboxes` by the stdlib parser, refusing every defect it reports
    but the tolerated ones."""
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
    comments, encoded words, look-alikes included). MalformedHeader when a
    bidirectional control character would show it in another order."""
    try:
        shown = rendered(value)
    except BidiControl as error:
        raise MalformedHeader(f"the {name} header contains {error}") from None
    found: dict[str, ShownAddress] = {}
    for text, domain_text in address_like(shown):
        try:
            domain = normalise_domain(domain_text)
        except ValueError:
            domain = domain_text.casefold()  # not a valid domain, yet a reader sees one
        look = domain_skeleton(domain)
        found.setdefault(look, ShownAddress(name, text, domain, look))  # ownership is per domain
    return tuple(found.values())


SENDER_HEADERS = ("From", "Sender", "Resent-From", "Resent-Sender")


def read_identity(headers: Sequence[tuple[str, str]]) -> IdentityHeaders:
    """Exactly one From with one or more mailboxes, at most one Sender with one;
    each Resent-From (one or more mailboxes) and Resent-Sender (one) of every
    resent block. Every one of them is read as a reader sees it."""
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
        sender = _single("Sender", sender_values[0])
        shown += shown_addresses("Sender", sender_values[0])
    resent: list[tuple[str, Mailbox]] = []
    for value in _values(headers, "resent-from"):
        resent += [("Resent-From", mailbox) for mailbox in parse_mailboxes("Resent-From", value)]
        shown += shown_addresses("Resent-From", value)
    for value in _values(headers, "resent-sender"):
        resent.append(("Resent-Sender", _single("Resent-Sender", value)))
        shown += shown_addresses("Resent-Sender", value)
    return IdentityHeaders(from_mailboxes, sender, shown, tuple(resent))


_READ = "_identity"  # txn.scratch: (headers seen, what read_identity made of them)


def transaction_identity(txn: Transaction) -> IdentityHeaders:
    """:func:`read_identity` of the transaction's headers, read once per message
    (the identity rule and the DKIM signer both need it, at the body and at the end)
    and again only if headers were added since. Raises MalformedHeader."""
    cached = txn.scratch.get(_READ)
    if isinstance(cached, tuple) and cached[0] == len(txn.headers):
        result = cached[1]
    else:
        try:
            result = read_identity(txn.headers)
        except MalformedHeader as error:
            result = error
        txn.scratch[_READ] = (len(txn.headers), result)
    if isinstance(result, MalformedHeader):
        raise MalformedHeader(str(result))
    return typing.cast(IdentityHeaders, result)


def _single(name: str, value: str) -> Mailbox:
    mailboxes = parse_mailboxes(name, value)
    if len(mailboxes) > 1:
        raise MalformedHeader(f"the {name} header must name exactly one address")
    return mailboxes[0]


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
        identity = transaction_identity(txn)
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
            or (txn.client.local_process and sender_domain in provider_hostnames)
        )
    ):
        return _not_owned(account, f"the envelope sender (MAIL FROM) {txn.mail_from}")
    for header, mailbox in identity.addresses():
        if not account_owns(account, mailbox.domain):
            return _not_owned(account, f"the {header} header address {mailbox.address}")
    for shown in identity.shown:
        if not account_shows_own(account, shown.look):
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


def account_shows_own(account: Account, look: str) -> bool:
    """Whether a shown domain's skeleton is one of the account's domains as a reader
    sees them (a look-alike of its own domain shows nobody else)."""
    for owned in account.domains:
        own_look = domain_skeleton(owned)
        if look == own_look or (account.allow_subdomains and look.endswith("." + own_look)):
            return True
    return False


def _unlisted_identity_verdict(
    txn: Transaction,
    account: Account,
    identity: IdentityHeaders,
    directory: AccountDirectory,
    provider_hostnames: Collection[str],
) -> Verdict | None:
    """A proven sender no account lists: never a customer's domain nor one a reader
    cannot tell from it; a login's own domain (the unlisted account's ``domains``)
    when it has one, else any other."""
    sender_domain = split_address(txn.mail_from)[1]
    claims: list[tuple[str, str, str | None, bool]] = []  # what, address, domain, shown
    if txn.mail_from and not (txn.client.local_process and sender_domain in provider_hostnames):
        claims.append(("the envelope sender (MAIL FROM)", txn.mail_from, sender_domain, False))
    claims += [
        (f"the {header} header address", mailbox.address, mailbox.domain, False)
        for header, mailbox in identity.addresses()
    ]
    claims += [
        (f"the {shown.header} header's display name address", _shown_text(shown), shown.domain,
         True)
        for shown in identity.shown
    ]  # fmt: skip
    for what, address, domain, shown in claims:
        look = domain_skeleton(domain) if domain else ""
        if domain is None or directory.owner_of_domain(domain) or directory.owner_of_look(look):
            return reject(
                RULE_IMPERSONATION,
                "550",
                "5.7.1",
                f"Impersonation refused: {what} {address} is "
                + ("not a usable address" if domain is None else "in (or looks like) a "
                   "domain of another customer of this provider")
                + f", and {_unlisted_label(txn, account)} is not that customer. Log in "
                "(SMTP AUTH) with the account that owns the domain.",
            )  # fmt: skip
        owned = account_shows_own(account, look) if shown else account_owns(account, domain)
        if account.domains and not owned:
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
