"""The evidence timeline support staff read (``sendwarden consent show``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sendwarden.consent.ledger import GENESIS_HASH, seal
from sendwarden.consent.model import ChainReport, EventKind, NewEvent, StoredEvent
from sendwarden.consent.timeline import render_dict, render_text

GRANTED_AT = datetime(2026, 3, 1, 10, 15, 2, tzinfo=UTC)
RECORDED = datetime(2026, 3, 1, 10, 20, tzinfo=UTC)


def sealed(*events: NewEvent) -> list[StoredEvent]:
    stored, prev = [], GENESIS_HASH
    for seq, event in enumerate(events, 1):
        stored.append(seal(seq, prev, event, RECORDED))
        prev = stored[-1].hash
    return stored


GRANT = NewEvent(
    account="acme",
    recipient="alice@example.org",
    kind=EventKind.GRANTED,
    occurred_at=GRANTED_AT,
    recorded_by="import:list.csv by root",
    method="double-opt-in",
    source="https://acme.example/signup",
    ip="198.51.100.7",
    confirmed_at=GRANTED_AT + timedelta(minutes=2, seconds=42),
    evidence="Message-ID <c1@acme.example>",
)
REVOKE = NewEvent(
    account="acme",
    recipient="alice@example.org",
    kind=EventKind.REVOKED,
    occurred_at=datetime(2026, 5, 2, 8, 0, tzinfo=UTC),
    recorded_by="api:acme",
    method="unsubscribe-link",
)
VERIFIED = ChainReport(ok=True, events_checked=3, head_seq=2, head_hash="ab")


def test_grant_confirmation_and_revocation() -> None:
    text = render_text("alice@example.org", sealed(GRANT, REVOKE), VERIFIED)
    assert text.splitlines() == [
        "alice@example.org — account acme",
        "  2026-03-01 10:15:02Z  GRANTED   double-opt-in via https://acme.example/signup"
        " (IP 198.51.100.7)",
        "                        confirmed 2026-03-01 10:17:44Z; evidence: Message-ID"
        " <c1@acme.example>",
        "                        recorded by import:list.csv by root at 2026-03-01 10:20:00Z (#1)",
        "  2026-05-02 08:00:00Z  REVOKED   unsubscribe-link",
        "                        recorded by api:acme at 2026-03-01 10:20:00Z (#2)",
        "  Current status: no consent (revoked 2026-05-02)",
        "Ledger chain: verified (3 events checked)",
    ]


def test_events_are_shown_in_the_order_they_happened() -> None:
    text = render_text("alice@example.org", sealed(REVOKE, GRANT), None)
    assert text.index("GRANTED") < text.index("REVOKED")
    assert "Current status: no consent (revoked 2026-05-02)" in text


def test_current_consent() -> None:
    text = render_text("alice@example.org", sealed(GRANT), None)
    assert "Current status: consent (double-opt-in on 2026-03-01)" in text


def test_per_list_status_and_accounts() -> None:
    news = NewEvent(
        account="acme",
        recipient="alice@example.org",
        kind=EventKind.GRANTED,
        occurred_at=GRANTED_AT,
        recorded_by="api:acme",
        list_id="news",
        method="single-opt-in",
    )
    other = NewEvent(
        account="beta",
        recipient="alice@example.org",
        kind=EventKind.REFUSED,
        occurred_at=GRANTED_AT,
        recorded_by="staff:jo",
        method="in-person",
    )
    text = render_text("alice@example.org", sealed(news, other), None)
    assert "    account-wide: no consent (nothing recorded)" in text
    assert "    list news: consent (single-opt-in on 2026-03-01)" in text
    assert "[list news]" in text
    assert "alice@example.org — account beta" in text
    assert "no consent (refused 2026-03-01)" in text


def test_a_broken_chain_is_said_plainly() -> None:
    broken = ChainReport(ok=False, events_checked=2, first_broken_seq=2, problem="edited")
    assert "Ledger chain: BROKEN at event #2: edited" in render_text(
        "alice@example.org", sealed(GRANT, REVOKE), broken
    )


def test_no_records() -> None:
    assert render_text("nobody@example.org", [], None) == "nobody@example.org: no consent records\n"


def test_json_shape() -> None:
    data = render_dict("alice@example.org", sealed(GRANT, REVOKE), VERIFIED)
    (account,) = data["accounts"]
    assert account["account"] == "acme"
    first = account["events"][0]
    assert first["kind"] == "granted" and first["ip"] == "198.51.100.7"
    assert first["confirmed_at"] == "2026-03-01T10:17:44.000000Z"
    assert account["status"] == [
        {
            "list_id": "",
            "consent": False,
            "deciding_seq": 2,
            "summary": "no consent (revoked 2026-05-02)",
        }
    ]
    assert data["chain"]["ok"] is True
