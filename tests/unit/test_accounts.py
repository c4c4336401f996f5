"""Which account sends: table tests of attribution by proof only."""

from __future__ import annotations

import ipaddress

import pytest

from sendwarden.config import ConfigError, settings_from_mapping
from sendwarden.policy.accounts import AccountDirectory, UnlistedAccount, is_listed, is_trusted

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
    ("login", "uid", "client", "local", "trusted", "expected", "source"),
    [
        # A proven identity authorises...
        ("alice@acme.example", None, "203.0.113.5", False, False, "acme", "login"),
        ("BOB", None, None, False, False, "globex", "login"),
        (None, 1002, "127.0.0.1", True, True, "globex", "uid"),
        (None, None, "192.0.2.99", False, False, "acme", "network"),
        (None, None, "192.0.2.10", False, False, "globex", "network"),  # longest prefix wins
        (None, None, "2001:db8::25", False, False, "globex", "network"),
        (None, None, "192.0.2.99", False, True, "acme", "network"),  # an account's, not trusted
        # ...a proven identity no account lists is an account of its own...
        ("Stranger", None, "192.0.2.10", False, False, "login:stranger", "login"),  # login alone
        # A mailbox of a customer's domain is the customer's without listing (issue 11).
        ("mallory@acme.example", None, None, False, False, "acme", "login"),
        (
            "mallory@mail.acme.example",
            None,
            None,
            False,
            False,
            "login:mallory@mail.acme.example",
            "login",
        ),
        (None, 4242, "127.0.0.1", True, True, "uid:4242", "uid"),  # never falls through
        (None, None, "127.0.0.1", True, True, "local:unknown", "local"),  # uid unreadable
        (None, None, "198.51.100.7", False, True, "host:198.51.100.7", "trusted-network"),
        (None, None, "2001:db8:1::7", False, True, "host:2001:db8:1::7", "trusted-network"),
        # ...and an unproven stranger is nobody, whatever it claims.
        (None, None, "203.0.113.5", False, False, None, ""),
        (None, None, None, False, False, None, ""),
    ],
)
def test_resolution_by_proof_only(
    login: str | None,
    uid: int | None,
    client: str | None,
    local: bool,
    trusted: bool,
    expected: str | None,
    source: str,
) -> None:
    attribution = DIRECTORY.resolve(
        login=login,
        uid=uid,
        client_address=ip(client) if client else None,
        local_submission=local,
        trusted=trusted,
    )
    account = attribution.account
    assert (account.id if account else None, attribution.source) == (expected, source)
    assert is_listed(account) == (expected is not None and ":" not in expected)


@pytest.mark.parametrize(
    ("login", "domains"),
    [
        ("bob@freemail.example", ("freemail.example",)),  # its login's own domain
        ("Bob@Sub.Freemail.Example", ("sub.freemail.example",)),
        ("mallory@mail.acme.example", ()),  # nor a subdomain of one
        ("carol", ()),
    ],
)
def test_unlisted_login_owns_its_domain_unless_a_customer_does(
    login: str, domains: tuple[str, ...]
) -> None:
    account = DIRECTORY.resolve(login=login, uid=None, client_address=None).account
    assert isinstance(account, UnlistedAccount)
    assert account.domains == domains
    assert account.recipients_per_hour is None  # the default limit
    assert (account.logins, account.uids, account.networks) == ((), (), ())


def test_a_customers_domain_is_never_an_unlisted_senders() -> None:
    # A login in acme.example is acme's (issue 11); the unlisted account such an id
    # names (a log line, a staff command) still gets no customer's domain.
    account = DIRECTORY.get("login:mallory@acme.example")
    assert isinstance(account, UnlistedAccount) and account.domains == ()


def test_unlisted_ids_name_their_account() -> None:
    for account_id in ("login:bob@x.example", "uid:4242", "host:198.51.100.7", "local:unknown"):
        account = DIRECTORY.get(account_id)
        assert isinstance(account, UnlistedAccount) and account.id == account_id
    assert DIRECTORY.get("host:2001:DB8::7") == DIRECTORY.get("host:2001:db8::7")
    assert DIRECTORY.get("acme") is SETTINGS.account("acme")
    for nothing in ("nobody", "uid:x", "host:not-an-address", "uid:"):
        assert DIRECTORY.get(nothing) is None


def test_configured_ids_may_not_look_like_unlisted_ones() -> None:
    with pytest.raises(ConfigError, match=r"accounts\[uid:1\]\.id"):
        settings_from_mapping({"accounts": [{"id": "uid:1"}]})


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
