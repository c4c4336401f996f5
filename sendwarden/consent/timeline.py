"""The evidence timeline support staff read when a recipient complains. PURE.

It answers the provider's question to the sender: did the recipient agree, and if
so when and where was the address recorded, how, from which IP, when was it
confirmed, and was consent withdrawn since.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sendwarden.consent.ledger import canonical_time, deciding_event, latest_key
from sendwarden.consent.model import ChainReport, EventKind, StoredEvent

_INDENT = " " * 24  # lines under an event line up with its description


def _when(moment: datetime) -> str:
    return canonical_time(moment)[:19].replace("T", " ") + "Z"


def _day(moment: datetime) -> str:
    return canonical_time(moment)[:10]


def _accounts(history: Sequence[StoredEvent]) -> list[str]:
    return sorted({stored.event.account for stored in history})


def _lists(history: Sequence[StoredEvent], account: str) -> list[str]:
    """'' (account-wide) first, then every list the account has events for."""
    named = {s.event.list_id for s in history if s.event.account == account and s.event.list_id}
    return ["", *sorted(named)]


def status_words(history: Sequence[StoredEvent], account: str, list_id: str) -> str:
    decider = deciding_event(history, account, list_id)
    if decider is None:
        return "no consent (nothing recorded)"
    event = decider.event
    if event.kind is EventKind.GRANTED:
        return f"consent ({event.method or 'granted'} on {_day(event.occurred_at)})"
    return f"no consent ({event.kind.value} {_day(event.occurred_at)})"


def _describe(stored: StoredEvent) -> tuple[str, list[str]]:
    """The event line's description and its detail lines: the evidence, then who
    recorded it and when."""
    event = stored.event
    head = event.method or event.kind.value
    if event.source:
        head += f" via {event.source}"
    if event.ip:
        head += f" (IP {event.ip})"
    if event.list_id:
        head += f" [list {event.list_id}]"
    evidence = []
    if event.confirmed_at is not None:
        evidence.append(f"confirmed {_when(event.confirmed_at)}")
    if event.evidence:
        evidence.append(f"evidence: {event.evidence}")
    recorded = f"recorded by {event.recorded_by} at {_when(stored.recorded_at)} (#{stored.seq})"
    return head, (["; ".join(evidence)] if evidence else []) + [recorded]


def chain_words(report: ChainReport) -> str:
    if report.ok:
        return f"verified ({report.events_checked} events checked)"
    return f"BROKEN at event #{report.first_broken_seq}: {report.problem}"


def render_text(recipient: str, history: Sequence[StoredEvent], chain: ChainReport | None) -> str:
    """The human timeline, one block per account, oldest event first."""
    if not history:
        return f"{recipient}: no consent records\n"
    lines: list[str] = []
    for account in _accounts(history):
        lines.append(f"{recipient} — account {account}")
        events = sorted((s for s in history if s.event.account == account), key=latest_key)
        for stored in events:
            head, details = _describe(stored)
            kind = stored.event.kind.value.upper()
            lines.append(f"  {_when(stored.event.occurred_at)}  {kind:<9} {head}")
            lines.extend(_INDENT + detail for detail in details)
        lists = _lists(history, account)
        if len(lists) == 1:
            lines.append(f"  Current status: {status_words(history, account, '')}")
        else:
            lines.append("  Current status:")
            for list_id in lists:
                label = f"list {list_id}" if list_id else "account-wide"
                lines.append(f"    {label}: {status_words(history, account, list_id)}")
    if chain is not None:
        lines.append(f"Ledger chain: {chain_words(chain)}")
    return "\n".join(lines) + "\n"


def _event_dict(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    return {
        "seq": stored.seq,
        "kind": event.kind.value,
        "list_id": event.list_id,
        "occurred_at": canonical_time(event.occurred_at),
        "method": event.method,
        "source": event.source,
        "ip": event.ip,
        "confirmed_at": canonical_time(event.confirmed_at) if event.confirmed_at else None,
        "evidence": event.evidence,
        "recorded_by": event.recorded_by,
        "recorded_at": canonical_time(stored.recorded_at),
        "hash": stored.hash,
    }


def chain_dict(report: ChainReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "first_broken_seq": report.first_broken_seq,
        "problem": report.problem,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
    }


def render_dict(
    recipient: str, history: Sequence[StoredEvent], chain: ChainReport | None
) -> dict[str, Any]:
    """The same timeline as JSON-ready data (``consent show --json``, the HTTP API)."""
    accounts = []
    for account in _accounts(history):
        events = sorted((s for s in history if s.event.account == account), key=latest_key)
        status = []
        for list_id in _lists(history, account):
            decider = deciding_event(history, account, list_id)
            status.append(
                {
                    "list_id": list_id,
                    "consent": decider is not None and decider.event.kind is EventKind.GRANTED,
                    "deciding_seq": decider.seq if decider else None,
                    "summary": status_words(history, account, list_id),
                }
            )
        accounts.append(
            {"account": account, "events": [_event_dict(s) for s in events], "status": status}
        )
    return {
        "recipient": recipient,
        "accounts": accounts,
        "chain": chain_dict(chain) if chain is not None else None,
    }
