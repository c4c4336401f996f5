"""Open relay rule: table tests over the facts that decide it."""

from __future__ import annotations

import ipaddress

import pytest

from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.relay import relay_verdict

LOCAL = frozenset({"hosting.example", "xn--bcher-kva.example"})


def txn(*, trusted: bool = False, login: str | None = None, source: str = "") -> Transaction:
    client = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example")
    return Transaction(client=client, trusted=trusted, login=login, account_source=source)


@pytest.mark.parametrize(
    ("facts", "recipient", "refused"),
    [
        (txn(), "bob@remote.example", True),
        (txn(), "<bob@remote.example>", True),
        (txn(), "postmaster@hosting.example", False),
        (txn(), "user@HOSTING.example", False),
        (txn(), "user@bücher.example", False),  # IDN local domain, U-label form
        (txn(), "user@sub.hosting.example", True),  # subdomains are not local unless listed
        (txn(), "no-domain", True),
        (txn(trusted=True), "bob@remote.example", False),
        (txn(login="alice@acme.example", source="login"), "bob@remote.example", False),
        (txn(login="unmapped"), "bob@remote.example", False),  # authenticated, unknown account
        (txn(source="network"), "bob@remote.example", False),  # the account's own server
        (txn(source="sender-domain"), "bob@remote.example", True),  # a claim proves nothing
        # Sender-specified routing through a local domain is relaying too.
        (txn(), "bob%remote.example@hosting.example", True),
        (txn(), "remote.example!bob@hosting.example", True),
        (txn(), '"bob@remote.example"@hosting.example', True),
        (txn(), '"bob\\@remote.example"@hosting.example', True),
        (txn(), "<@hosting.example:bob@remote.example>", True),  # source route
        (txn(), "<@hosting.example,@mx.hosting.example:bob@hosting.example>", True),
        (txn(trusted=True), "bob%remote.example@hosting.example", False),
        (txn(login="alice@acme.example", source="login"), "a!b@hosting.example", False),
        (txn(), "bob.smith+tag@hosting.example", False),
    ],
)
def test_relay(facts: Transaction, recipient: str, refused: bool) -> None:
    verdict = relay_verdict(facts, recipient, LOCAL)
    assert (verdict is not None) == refused
    if verdict is not None:
        assert verdict.reply().startswith("554 5.7.1 Relaying denied")
        assert "198.51.100.7" in verdict.text


def test_routed_reply_says_why() -> None:
    verdict = relay_verdict(txn(), "bob%remote.example@hosting.example", LOCAL)
    assert verdict is not None and "routes mail onward through this server" in verdict.text
