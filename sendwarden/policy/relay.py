"""No open relay: an unidentified client outside the trusted networks may only
deliver to the provider's own (local) domains."""

from __future__ import annotations

from collections.abc import Collection

from sendwarden.addresses import domain_of
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict, reject

RULE = "relay"


def is_local(recipient: str, local_domains: Collection[str]) -> bool:
    """Mail to a local domain is inbound mail, never relaying."""
    domain = domain_of(recipient)
    return domain is not None and domain in local_domains


def relay_verdict(
    txn: Transaction, recipient: str, local_domains: Collection[str]
) -> Verdict | None:
    """554 5.7.1 for an unauthenticated, untrusted client writing to a non-local domain."""
    if txn.trusted or txn.identified or is_local(recipient, local_domains):
        return None
    return reject(
        RULE,
        "554",
        "5.7.1",
        f"Relaying denied: {recipient} is not a domain hosted here, and {txn.client} "
        "is neither logged in nor on a trusted network. Log in (SMTP AUTH) to send "
        "mail to other domains.",
    )
