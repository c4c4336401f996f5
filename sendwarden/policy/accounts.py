"""Which account sends a message: pure lookups over the configured accounts.

**A proven identity authorises; a claim only labels.** The sender is found only
from what the MTA proves: the SASL login, the uid of a local submission (read
from data only Postfix writes), a client address in an account's ``networks``,
or a client address on ``trusted_networks``. The envelope sender, the headers
and the message text are claims: they never pick the account whose quota is
spent, whose strikes suspend, whose domains From may use or whose key signs.

A proven identity that no account lists is an account of its own
(:class:`UnlistedAccount`), named after the identity (``login:bob@mail.example``,
``uid:1005``, ``host:192.0.2.7``, ``local:unknown``), with the default limit,
strikes and suspension. Unauthenticated mail from an untrusted client (inbound
mail from strangers) belongs to no account: it spends and strikes nothing.

The accounts are the config's, or (issue 11) the provider's own records with the
config's overrides on top (:mod:`sendwarden.directory`), behind the small
:class:`AccountLookups` interface; a login that is an address in an account's domain
is that account's without being listed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sendwarden.addresses import domain_of
from sendwarden.config import Account, IPNetwork
from sendwarden.policy.facts import IPAddress
from sendwarden.policy.rendering import domain_skeleton

#: Prefixes of unlisted accounts' ids; configured ids may not contain ``:``, so the
#: two never collide.
LOGIN_PREFIX = "login:"
UID_PREFIX = "uid:"
HOST_PREFIX = "host:"
UNKNOWN_LOCAL_ID = "local:unknown"  # a local submission whose uid could not be read
#: Unlisted accounts remembered per directory in force.
UNLISTED_CACHE = 1024


class Proof(StrEnum):
    """How the sender proved who it is (``Transaction.account_source``)."""

    LOGIN = "login"  # SASL {auth_authen}
    UID = "uid"  # the uid Postfix recorded for a sendmail(1) submission
    NETWORK = "network"  # the client address is in an account's networks
    TRUSTED = "trusted-network"  # the client address is on policy.trusted_networks
    LOCAL = "local"  # a sendmail(1) submission whose uid could not be read


@dataclass(frozen=True)
class UnlistedAccount(Account):
    """A proven sender no configured account lists: counted, limited and suspended
    like any account under the defaults, and never the owner of a customer's domain.

    ``domains`` holds the login's own domain when no customer owns it."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """The sending account (None: an unproven stranger) and how it was proven."""

    account: Account | None
    proof: Proof | None

    @property
    def source(self) -> str:
        return self.proof.value if self.proof else ""


NOBODY = Attribution(None, None)


class AccountLookups(Protocol):
    """The identity lookups a directory answers (exact keys, no inference)."""

    def get(self, account_id: str) -> Account | None: ...

    def listed_login(self, login: str) -> Account | None: ...

    def by_uid(self, uid: int) -> Account | None: ...

    def by_address(self, address: IPAddress) -> Account | None: ...

    def owner_of_exact_domain(self, domain: str) -> Account | None: ...

    def owner_of_exact_look(self, look: str) -> Account | None:
        """The owner of a domain whose confusable skeleton is exactly ``look``."""


class ConfiguredAccounts:
    """Index of the config's accounts by each identity they own, built once per load."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self.accounts: tuple[Account, ...] = tuple(accounts)
        self._by_id = {account.id: account for account in self.accounts}
        self._by_login = {
            login.casefold(): account for account in self.accounts for login in account.logins
        }
        self._by_uid = {uid: account for account in self.accounts for uid in account.uids}
        self._by_domain = {
            domain: account for account in self.accounts for domain in account.domains
        }
        self._by_look: dict[str, Account] | None = None  # built on first use
        # Longest prefix first, so a /32 inside another account's /24 wins.
        self._networks: Sequence[tuple[IPNetwork, Account]] = sorted(
            ((network, account) for account in self.accounts for network in account.networks),
            key=lambda pair: pair[0].prefixlen,
            reverse=True,
        )

    def get(self, account_id: str) -> Account | None:
        return self._by_id.get(account_id)

    def listed_login(self, login: str) -> Account | None:
        return self._by_login.get(login.casefold())

    def by_uid(self, uid: int) -> Account | None:
        return self._by_uid.get(uid)

    def by_address(self, address: IPAddress) -> Account | None:
        for network, account in self._networks:
            if address.version == network.version and address in network:
                return account
        return None

    def owner_of_exact_domain(self, domain: str) -> Account | None:
        return self._by_domain.get(domain)

    def owner_of_exact_look(self, look: str) -> Account | None:
        """The account of a domain with this skeleton (index built on first use)."""
        looks = self._by_look
        if looks is None:
            looks = self._by_look = {}
            for domain, account in self._by_domain.items():
                looks.setdefault(domain_skeleton(domain), account)
        return looks.get(look)


class AccountDirectory:
    """Which account owns an identity: the config's accounts, or (with ``lookups``) the
    current directory of the provider's sources with the config's overrides on top,
    which a background refresh replaces whole (:mod:`sendwarden.directory.live`)."""

    def __init__(
        self,
        accounts: Iterable[Account] = (),
        *,
        lookups: Callable[[], AccountLookups] | None = None,
    ) -> None:
        self._configured = ConfiguredAccounts(accounts)
        self.accounts = self._configured.accounts
        self._lookups = lookups or (lambda: self._configured)
        self._unlisted_cache: tuple[object, dict[str, UnlistedAccount]] = (None, {})

    @property
    def current(self) -> AccountLookups:
        """The lookups in force now (take it once to ask several questions of one
        directory)."""
        return self._lookups()

    def get(self, account_id: str) -> Account | None:
        """An account of the directory, or the unlisted account an id like ``uid:1005``
        names (so staff can suspend and lift unlisted senders by the id the log shows)."""
        return self.current.get(account_id) or self.unlisted(account_id)

    def by_login(self, login: str) -> Account | None:
        """The account of a SASL login: the one listing it, or else, for a login that is
        an address, the account owning its domain (a mailbox of the account's domain
        needs no listing)."""
        lookups = self.current
        account = lookups.listed_login(login)
        if account is None and "@" in login:
            domain = domain_of(login)
            account = lookups.owner_of_exact_domain(domain) if domain else None
        return account

    def by_uid(self, uid: int) -> Account | None:
        return self.current.by_uid(uid)

    def by_address(self, address: IPAddress) -> Account | None:
        return self.current.by_address(address)

    def owner_of_domain(self, domain: str | None, *, subdomains: bool = True) -> Account | None:
        """The account owning a normalised domain (or, with subdomains, a parent of it)."""
        lookups = self.current
        while domain:
            account = lookups.owner_of_exact_domain(domain)
            if account is not None or not subdomains:
                return account
            _, _, domain = domain.partition(".")
        return None

    def owner_of_look(self, look: str) -> Account | None:
        """The account owning a domain a reader cannot tell from one with this
        confusable skeleton (:func:`~sendwarden.policy.rendering.domain_skeleton`),
        or from a parent of it: acme.example with a Cyrillic a (U+0430) is acme's.
        Over the config's domains and the directory's."""
        lookups = self.current
        while look:
            if (account := lookups.owner_of_exact_look(look)) is not None:
                return account
            _, _, look = look.partition(".")
        return None

    def resolve(
        self,
        *,
        login: str | None,
        uid: int | None,
        client_address: IPAddress | None,
        local_submission: bool = False,
        trusted: bool = False,
    ) -> Attribution:
        """The sending account from proven identities only, strongest first.

        The SASL login decides alone (a password proves more than an address).
        A local submission (or any local process whose uid the kernel or the MTA
        proved) is its uid's, or the unknown local sender's when the uid could not be
        read: never anyone's by what the submitter wrote. Then the
        client address: an account's ``networks``, else a trusted-network host of
        its own. Anything else is a stranger: no account.
        """
        if login:
            return Attribution(self.by_login(login) or self.unlisted_login(login), Proof.LOGIN)
        if local_submission or uid is not None:  # a process on this host, proven by uid
            if uid is None:
                return Attribution(self._unlisted(UNKNOWN_LOCAL_ID), Proof.LOCAL)
            return Attribution(self.by_uid(uid) or self._unlisted(f"{UID_PREFIX}{uid}"), Proof.UID)
        if client_address is not None:
            if (account := self.by_address(client_address)) is not None:
                return Attribution(account, Proof.NETWORK)
            if trusted:
                return Attribution(self._unlisted(f"{HOST_PREFIX}{client_address}"), Proof.TRUSTED)
        return NOBODY

    def unlisted_login(self, login: str) -> UnlistedAccount:
        """The account of its own of a login no account lists: it may send from its
        login's domain, unless that domain (or a parent) is a customer's."""
        return self._unlisted(f"{LOGIN_PREFIX}{login.casefold()}")

    def unlisted(self, account_id: str) -> UnlistedAccount | None:
        """The unlisted account an id names, or None for an id of no such shape."""
        if account_id == UNKNOWN_LOCAL_ID or account_id.startswith(LOGIN_PREFIX):
            return self._unlisted(account_id)
        if account_id.startswith(UID_PREFIX) and account_id.removeprefix(UID_PREFIX).isdigit():
            return self._unlisted(account_id)
        if account_id.startswith(HOST_PREFIX):
            try:
                address = ipaddress.ip_address(account_id.removeprefix(HOST_PREFIX))
            except ValueError:
                return None
            return self._unlisted(f"{HOST_PREFIX}{address}")
        return None

    def _unlisted(self, account_id: str) -> UnlistedAccount:
        # Cached per directory in force: a refresh may give a login's domain to a
        # customer, and then the unlisted login may no longer use it.
        lookups = self.current
        owner, cache = self._unlisted_cache
        if owner is not lookups:
            cache = {}
            self._unlisted_cache = (lookups, cache)
        account = cache.get(account_id)
        if account is None:
            domains: tuple[str, ...] = ()
            if account_id.startswith(LOGIN_PREFIX):
                domain = domain_of(account_id.removeprefix(LOGIN_PREFIX))
                if domain and self.owner_of_domain(domain) is None:
                    domains = (domain,)
            account = UnlistedAccount(id=account_id, domains=domains)
            if len(cache) >= UNLISTED_CACHE:
                cache.clear()
            cache[account_id] = account
        return account


def is_listed(account: Account | None) -> bool:
    """Whether a configured account (not an unlisted proven sender) sends."""
    return account is not None and not isinstance(account, UnlistedAccount)


def is_trusted(address: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether a client address lies in one of the trusted networks."""
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)
