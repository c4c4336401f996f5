"""Forged headers and impersonation, judged at end of message (pure rules, no store).

Forged provider headers (``Received:``/``Authentication-Results:`` in the provider's
name, sendwarden's own headers) are refused or stripped, as
``policy.forged_header_action`` says, for outbound mail. Mail from the internet to the
provider's own domains is never refused for them (a message that left through this
provider and came back through a list carries its Received line honestly); only the
Authentication-Results and sendwarden headers are stripped from it, so nothing
downstream trusts a result the provider never produced (RFC 8601 section 5).
"""

from __future__ import annotations

from sendwarden.checks.base import Check
from sendwarden.config import Settings
from sendwarden.decisionlog import add_note
from sendwarden.policy.accounts import AccountDirectory, is_listed
from sendwarden.policy.facts import Transaction
from sendwarden.policy.forged_headers import (
    ALERT_HEADER,
    ForgedHeader,
    ForgedKind,
    authserv_ids,
    find_forged_headers,
    forged_header_verdict,
)
from sendwarden.policy.identity import MalformedHeader, identity_verdict, transaction_identity
from sendwarden.policy.verdict import Verdict

NAME = "identity"


class IdentityCheck(Check):
    name = NAME

    def __init__(self, settings: Settings, directory: AccountDirectory | None = None) -> None:
        policy = settings.policy
        self._directory = directory or AccountDirectory(settings.accounts)
        self._provider_hostnames = frozenset(policy.provider_hostnames)
        self._authserv_ids = authserv_ids(policy.authserv_id, policy.provider_hostnames)
        self._strip = policy.forged_header_action == "strip"
        # sendwarden's own alert mail proves itself by the alert service's SASL login.
        self._own_login = settings.alerts.smtp_login.casefold()

    def at_eom(self, txn: Transaction) -> Verdict | None:
        verdict = identity_verdict(
            txn, self._directory, provider_hostnames=self._provider_hostnames
        )
        if verdict is not None:
            return verdict
        if txn.account is not None and not is_listed(txn.account):
            add_note(txn, f"identity: unlisted sender {txn.account.id}; From {_from_text(txn)}")
        return self._forged_headers(txn)

    def _forged_headers(self, txn: Transaction) -> Verdict | None:
        forged = find_forged_headers(
            txn.headers,
            provider_hostnames=self._provider_hostnames,
            authserv_ids=self._authserv_ids,
            queue_id=txn.queue_id,
        )
        if self._own_login and txn.login is not None and txn.login.casefold() == self._own_login:
            forged = [header for header in forged if header.name.lower() != ALERT_HEADER.lower()]
        outbound = txn.identified or txn.trusted
        if not outbound:
            forged = [header for header in forged if header.kind is not ForgedKind.RECEIVED]
        if not forged:
            return None
        if outbound and not self._strip:
            return forged_header_verdict(txn, forged[0])
        _strip(txn, forged)
        return None


def _strip(txn: Transaction, forged: list[ForgedHeader]) -> None:
    """Remove from the highest index down, so each index still names the same header
    whether or not the MTA renumbers after a removal."""
    for header in sorted(forged, key=lambda header: header.index, reverse=True):
        txn.changes.remove_headers.append((header.name, header.index))
        add_note(txn, f"identity: stripped forged {header.name} #{header.index} ({header.claim})")


def _from_text(txn: Transaction) -> str:
    try:
        return ", ".join(mailbox.address for mailbox in transaction_identity(txn).from_mailboxes)
    except MalformedHeader:
        return "(unreadable)"
