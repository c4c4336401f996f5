"""The milter side of consent: bulk mail at end of message needs every
recipient's consent, asked of the ledger in one batched query.

Personal mail costs no Redis round trip of its own: the rate limit's
end-of-message script counts the account's distinct recipients this hour and
records this message's (``txn.recent_recipients``); only without it (no account
counted there) does this check count, and record after acceptance, itself. Bulk
mail costs one consent query on top. The consent
database is opened on first use (the servers start opening it in the background
when they start: SharedDatabase.open_soon), and a database that is down then is
retried per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from sendwarden.checks.base import Check
from sendwarden.config import ConsentSettings, Settings
from sendwarden.consent.bulk import RecentRecipients, RecipientCounter
from sendwarden.consent.model import ConsentStore
from sendwarden.decisionlog import add_note
from sendwarden.policy.accounts import is_listed
from sendwarden.policy.consent import (
    campaign_reason,
    consent_outcome,
    distinct_recipients,
    has_list_unsubscribe,
    is_outbound,
    list_id_of,
    message_bulk_reasons,
    missing_unsubscribe_verdict,
    no_account_verdict,
    offered_unsubscribe_uris,
    one_click_uri,
)
from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.store.suspensions import SharedDatabase

log = logging.getLogger(__name__)

NAME = "consent"


class ConsentCheck(Check):
    name = NAME

    def __init__(
        self,
        settings: ConsentSettings,
        ledger: Callable[[], ConsentStore],
        recent: RecipientCounter,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        # The open ledger, opened once by ``ledger`` itself (a SharedDatabase: one
        # lock and one wait of at most ``timeout_ms``, StoreError when it cannot be
        # reached), so this check keeps no second copy of it, nor of the waiting.
        self._ledger = ledger
        self._recent = recent
        # A ledger shared with others (other checks, the configurations a reload
        # replaced) is given back by ``release``, never closed here under their feet.
        self._release = release

    def at_eom(self, txn: Transaction) -> Verdict | None:
        if not txn.recipients or not is_outbound(txn):
            return None
        distinct = distinct_recipients(txn.recipients)
        reasons = self._bulk_reasons(txn, len(distinct))
        if not reasons:
            return None
        account = txn.account
        if account is None or not is_listed(account):  # unlisted: no consent on record
            log.warning(
                "bulk mail from %s (queue id %s) belongs to no account: refused",
                txn.client,
                txn.queue_id or "?",
            )
            return no_account_verdict(txn, reasons)
        if not has_list_unsubscribe(txn):
            return missing_unsubscribe_verdict(account.id, reasons, offered_unsubscribe_uris(txn))
        one_click = one_click_uri(txn)
        add_note(
            txn,
            f"consent: RFC 8058 one-click unsubscribe <{one_click}>"
            if one_click
            else "consent: List-Unsubscribe without RFC 8058 one-click",
        )
        consenting = self._ledger().consenting(account.id, list(distinct), list_id_of(txn))
        outcome = consent_outcome(
            account.id,
            distinct,
            consenting,
            reasons,
            self._settings.on_missing_consent,
            envelope=txn.recipients,
        )
        if outcome.remove:
            txn.changes.remove_recipients.extend(outcome.remove)
        if outcome.header:
            txn.changes.add_headers.append(outcome.header)
        return outcome.verdict

    def after_verdict(self, txn: Transaction, verdict: Verdict) -> None:
        """Count the recipients of accepted outbound mail towards the account's hour."""
        accepted = not verdict.is_final or verdict.action is Action.ACCEPT
        if not accepted or txn.account is None or not is_outbound(txn):
            return
        if txn.recent_recipients is not None:
            return  # the rate limit's end-of-message round trip recorded them already
        removed = set(txn.changes.remove_recipients)
        delivered = [r for r in txn.recipients if r not in removed]
        self._recent.add(txn.account.id, delivered)

    def close(self) -> None:
        if self._release is not None:
            self._release()

    def _bulk_reasons(self, txn: Transaction, distinct_count: int) -> list[str]:
        """The message's own bulk signals first; the hourly count only when they are silent."""
        reasons = message_bulk_reasons(txn, self._settings.bulk_recipient_threshold, distinct_count)
        if reasons or txn.account is None:
            return reasons
        recent = txn.recent_recipients
        if recent is None:
            recent = self._recent.count(txn.account.id)
        reason = campaign_reason(recent, self._settings.bulk_distinct_recipients_per_hour)
        return [reason] if reason else []


def consent_check_from_settings(
    settings: Settings,
    client: redis.Redis,
    database: Callable[[], ConsentStore] | None = None,
    recent: RecipientCounter | None = None,
) -> ConsentCheck:
    """The check of one configuration: its ledger (``database``, shared with the
    other users of the durable database, or its own SharedDatabase; given back by
    the check's ``close``), its Redis and key prefix (or ``recent``, the
    distinct-recipient counter shared with the rate limit)."""
    if database is None:
        database = SharedDatabase(settings)
    if recent is None:
        recent = RecentRecipients(client, settings.redis.key_prefix)
    return ConsentCheck(settings.consent, database, recent, getattr(database, "close", None))
