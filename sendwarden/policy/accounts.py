"""Which account sends a message: pure lookups over the configured accounts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sendwarden.addresses import domain_of
from sendwarden.config import Account, IPNetwork
from sendwarden.policy.facts import IPAddress


class AccountDirectory:
    """Index of accounts by each identity they own, built once per config load."""

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

    def by_login(self, login: str) -> Account | None:
        return self._by_login.get(login.casefold())

    def by_uid(self, uid: int) -> Account | None:
        return self._by_uid.get(uid)

    def by_address(self, address: IPAddress) -> Account | None:
        for network, account in self._networks:
            if address.version == network.version and address in network:
                return account
        return None

    def owner_of_domain(self, domain: str | None, *, subdomains: bool = True) -> Account | None:
        """The account owning a normalised domain (or, with subdomains, a parent of it)."""
        while domain:
            account = self._by_domain.get(domain)
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
