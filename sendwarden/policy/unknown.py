"""Senders no account lists, when the provider lists every sender.

With ``policy.unknown_senders = "limit"`` (the default) a proven sender that no
account lists is an account of its own under the default limits. Providers that
list every sender set ``"refuse"``: its mail is refused with ``550 5.7.1`` (at
MAIL over SMTP, at end of message for sendmail(1), where Postfix allows no
earlier reply). Strangers (unauthenticated, untrusted clients) are not senders
of the provider at all: the relay rule confines them to local domains.
"""

from __future__ import annotations

from sendwarden.config import UnknownSenders
from sendwarden.policy.accounts import HOST_PREFIX, UNKNOWN_LOCAL_ID, is_listed
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict, reject

RULE = "unknown-sender"


def unknown_sender_verdict(txn: Transaction, mode: UnknownSenders) -> Verdict | None:
    """550 5.7.1 for an unlisted proven sender when the provider refuses them."""
    account = txn.account
    if mode != "refuse" or account is None or is_listed(account):
        return None
    return reject(
        RULE,
        "550",
        "5.7.1",
        f"Sender refused: {_who(txn)} belongs to no hosting account of this provider, "
        "which accepts mail only from the senders it lists. Ask the provider's support "
        "to add it to your account.",
    )


def _who(txn: Transaction) -> str:
    account_id = txn.account.id if txn.account else ""
    if txn.login:
        return f"the login {txn.login}"
    if account_id == UNKNOWN_LOCAL_ID:
        return "a local user whose uid could not be read"
    if txn.uid is not None:
        return f"the local user with uid {txn.uid}"
    if account_id.startswith(HOST_PREFIX):
        return f"the host {account_id.removeprefix(HOST_PREFIX)}"
    return f"the sender {account_id}"
