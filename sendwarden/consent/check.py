"""The milter side of consent: bulk mail at end of message needs every
recipient's consent, asked of the ledger in one batched query.

Personal mail costs no Redis round trip of its own: the rate limit's
end-of-message script counts the account's distinct recipients this hour and
records this message's (``txn.recent_recipients``); only without it (no account
counted there) does this check count, and record after acceptance, itself. Bulk
mail costs one consent query on top. The consent
database is opened on first use, so a milter whose customers send no bulk mail
never needs it, and a database that is down at start-up is retried per message.
"""

from __future__ import annotations

import logging
import threading
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
from sendwarden.store import open_once

log = logging.getLogger(__name__)

NAME = "consent"


class ConsentCheck(Check):
    name = NAME

    def __init__(
        self,
        settings: ConsentSettings,
        open_store: Callable[[], ConsentStore],
        recent: RecipientCounter,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._open_store = open_store
        self._recent = recent
        # A ledger shared with others (other checks, the configurations a reload
        # replaced) is given back by ``release``, never closed here under their feet.
        self._release = release
        self._store: ConsentStore | None = None
        self._store_lock = threading.Lock()

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
        consenting = self._store_now().consenting(account.id, list(distinct), list_id_of(txn))
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
        with self._store_lock:
            store, self._store = self._store, None
        if self._release is not None:
            self._release()
        elif store is not None:
            store.close()

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

    def _store_now(self) -> ConsentStore:
        """The ledger, opened on first use (StoreError when it cannot be reached); a
        message waits at most ``timeout_ms`` for another one opening it."""
        store = self._store
        if store is not None:
            return store
        return open_once(self._store_lock, self._settings.timeout_ms, self._open)

    def _open(self) -> ConsentStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store


def consent_check_from_settings(
    settings: Settings,
    client: redis.Redis,
    open_database: Callable[[], ConsentStore] | None = None,
    recent: RecipientCounter | None = None,
) -> ConsentCheck:
    """The check of one configuration: its ledger URL (or ``open_database``, shared
    with the other users of the durable database and given back by its ``close``),
    its Redis and key prefix (or ``recent``, the distinct-recipient counter shared
    with the rate limit)."""

    def open_store() -> ConsentStore:
        if open_database is not None:
            return open_database()
        from sendwarden.consent.store import open_from_settings  # the driver only when needed

        return open_from_settings(settings.consent)

    if recent is None:
        recent = RecentRecipients(client, settings.redis.key_prefix)
    release = getattr(open_database, "close", None) if open_database is not None else None
    return ConsentCheck(settings.consent, open_store, recent, release)
