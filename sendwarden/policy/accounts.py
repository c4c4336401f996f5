"""Which account sends a message: pure lookups over the configured accounts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from sendwarden.addresses import domain_of
from sendwarden.config import Account, IPNetwork
from sendwarden.policy.facts import IPAddress


class AccountLookups(Protocol):
    """The identity lookups a directory answers (exact keys, no inference)."""

    def get(self, account_id: str) -> Account | None: ...

    def listed_login(self, login: str) -> Account | None: ...

    def by_uid(self, uid: int) -> Account | None: ...

    def by_address(self, address: IPAddress) -> Account | None: ...

    def owner_of_exact_domain(self, domain: str) -> Account | None: ...


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

    @property
    def current(self) -> AccountLookups:
        """The lookups in force now (take it once to ask several questions of one
        directory)."""
        return self._lookups()

    def get(self, account_id: str) -> Account | None:
        return self.current.get(account_id)

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

    def resolve(
        self,
        *,
        login: str | None,
        uid: int | None,
        client_address: IPAddress | None,
        mail_from: str,
    ) -> tuple[Account | None, str]:
        """The sending account and how it was found, in the documented order.

        SASL login first (proved by a password), then the local uid of a
        sendmail(1) submission, then the client address, and last the envelope
        sender domain (claimed, not proved: it attributes, it never authorises).
        """
        if login:
            account = self.by_login(login)
            return account, "login" if account else ""
        if uid is not None and (account := self.by_uid(uid)) is not None:
            return account, "uid"
        if client_address is not None and (account := self.by_address(client_address)):
            return account, "network"
        if account := self.owner_of_domain(domain_of(mail_from), subdomains=False):
            return account, "sender-domain"
        return None, ""


def is_trusted(address: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether a client address lies in one of the trusted networks."""
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)
