"""Which account sends: table tests of the resolution order."""

from __future__ import annotations

import ipaddress

import pytest

from sendwarden.config import settings_from_mapping
from sendwarden.policy.accounts import AccountDirectory, is_trusted

SETTINGS = settings_from_mapping(
    {
        "accounts": [
            {
                "id": "acme",
                "logins": ["alice@acme.example"],
                "uids": [1001],
                "domains": ["acme.example"],
                "networks": ["192.0.2.0/24"],
            },
            {
                "id": "globex",
                "logins": ["Bob"],
                "uids": [1002],
                "domains": ["globex.example"],
                "networks": ["192.0.2.10/32", "2001:db8::/64"],
            },
        ]
    }
)
DIRECTORY = AccountDirectory(SETTINGS.accounts)
ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("login", "uid", "client", "mail_from", "expected", "source"),
    [
        ("alice@acme.example", None, "203.0.113.5", "x@globex.example", "acme", "login"),
        ("BOB", None, None, "", "globex", "login"),
        ("stranger", None, "192.0.2.10", "x@acme.example", None, ""),  # a login decides alone
        (None, 1002, "127.0.0.1", "x@acme.example", "globex", "uid"),
        (None, 4242, "192.0.2.99", "", "acme", "network"),  # unknown uid falls through
        (None, None, "192.0.2.10", "", "globex", "network"),  # longest prefix wins
        (None, None, "2001:db8::25", "", "globex", "network"),
        (None, None, "203.0.113.5", "someone@ACME.example", "acme", "sender-domain"),
        (None, None, "203.0.113.5", "someone@sub.acme.example", None, ""),
        (None, None, "203.0.113.5", "", None, ""),
    ],
)
def test_resolution_order(
    login: str | None,
    uid: int | None,
    client: str | None,
    mail_from: str,
    expected: str | None,
    source: str,
) -> None:
    account, how = DIRECTORY.resolve(
        login=login, uid=uid, client_address=ip(client) if client else None, mail_from=mail_from
    )
    assert (account.id if account else None, how) == (expected, source)


def test_domain_owner_with_and_without_subdomains() -> None:
    assert DIRECTORY.owner_of_domain("mail.acme.example") is SETTINGS.account("acme")
    assert DIRECTORY.owner_of_domain("mail.acme.example", subdomains=False) is None
    assert DIRECTORY.owner_of_domain(None) is None


def test_trusted_networks() -> None:
    networks = SETTINGS.policy.trusted_networks
    assert is_trusted(ip("127.0.0.5"), networks)
    assert is_trusted(ip("::1"), networks)
    assert not is_trusted(ip("198.51.100.1"), networks)
    assert not is_trusted(None, networks)
