"""No open relay: an unidentified client outside the trusted networks may only
deliver to the provider's own (local) domains, and only to plain addresses there.

A local part that routes the mail onward (``user%remote.example@local``,
``remote.example!user@local``, ``"user@remote.example"@local``, or a source route
``@local:user@remote.example``) asks this server to relay: Postfix refuses those
from untrusted clients with ``allow_untrusted_routing = no``, and so does this rule.
"""

from __future__ import annotations

from collections.abc import Collection

from sendwarden.addresses import domain_of, strip_brackets
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict, reject

RULE = "relay"
_ROUTING = frozenset("%!@")


def is_local(recipient: str, local_domains: Collection[str]) -> bool:
    """Mail to a local domain is inbound mail, never relaying."""
    domain = domain_of(recipient)
    return domain is not None and domain in local_domains


def sender_routed(recipient: str) -> bool:
    """Whether the address carries sender-specified routing: a source route, or a
    ``%``, ``!`` or (quoted) ``@`` in its local part."""
    address = strip_brackets(recipient)
    if address.startswith("@"):
        return True
    local, at, _ = address.rpartition("@")
    return bool(at) and not _ROUTING.isdisjoint(local)


def relay_verdict(
    txn: Transaction, recipient: str, local_domains: Collection[str]
) -> Verdict | None:
    """554 5.7.1 for an unauthenticated, untrusted client writing to a non-local
    domain, or to a local one through an address that routes onward."""
    if txn.trusted or txn.identified:
        return None
    routed = sender_routed(recipient)
    if is_local(recipient, local_domains) and not routed:
        return None
    where = (
        "routes mail onward through this server (a %, !, quoted @ or source route in the address)"
        if routed
        else "is not a domain hosted here"
    )
    return reject(
        RULE,
        "554",
        "5.7.1",
        f"Relaying denied: {recipient} {where}, and {txn.client} is neither logged in nor "
        "on a trusted network. Log in (SMTP AUTH) to send mail to other domains.",
    )
