"""The consent check driven through the pipeline with in-memory stand-ins (no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import pytest

from sendwarden.checks.relay import RelayCheck
from sendwarden.config import settings_from_mapping
from sendwarden.consent.check import ConsentCheck
from sendwarden.consent.model import ChainReport, NewEvent, StoredEvent
from sendwarden.pipeline import TRACE, Pipeline
from sendwarden.policy.consent import REMOVED_HEADER
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import Action, Verdict
from sendwarden.store import StoreError

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
TRUSTED = Client(address=ipaddress.ip_address("127.0.0.1"), hostname="web.local", port=4711)
LOCAL = Client(
    address=ipaddress.ip_address("127.0.0.1"), hostname="localhost", local_submission=True
)
UNSUBSCRIBE = ("List-Unsubscribe", "<https://acme.example/u/1>")


class MemoryConsents:
    """consenting() from a set of (account, list_id, recipient); counts the queries."""

    def __init__(self, granted: Iterable[tuple[str, str, str]] = ()) -> None:
        self.granted = set(granted)
        self.queries: list[tuple[str, list[str], str]] = []
        self.down = False
        self.closed = False

    def consenting(self, account: str, recipients: Sequence[str], list_id: str = "") -> set[str]:
        if self.down:
            raise StoreError("consent-db", "connection refused")
        self.queries.append((account, list(recipients), list_id))
        return {r for r in recipients if {(account, "", r), (account, list_id, r)} & self.granted}

    def append(self, events: Iterable[NewEvent]) -> int:
        raise NotImplementedError

    def history(self, recipient: str, account: str | None = None) -> list[StoredEvent]:
        raise NotImplementedError

    def verify(self) -> ChainReport:
        raise NotImplementedError

    def verify_events(self, seqs: Iterable[int]) -> ChainReport:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class MemoryCounter:
    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.added: dict[str, list[str]] = {}
        self.counted = 0

    def count(self, account_id: str) -> int:
        self.counted += 1
        return self.start + len(set(self.added.get(account_id, [])))

    def add(self, account_id: str, recipients: Sequence[str]) -> None:
        self.added.setdefault(account_id, []).extend(recipients)


def build(
    granted: Iterable[tuple[str, str, str]] = (),
    *,
    on_missing: str = "reject",
    on_store_error: str = "tempfail",
    recent: int = 0,
) -> tuple[Pipeline, MemoryConsents, MemoryCounter]:
    settings = settings_from_mapping(
        {
            "policy": {
                "local_domains": ["hosting.example"],
                "trusted_networks": ["127.0.0.1/32"],
                "on_store_error": on_store_error,
            },
            "consent": {
                "bulk_recipient_threshold": 5,
                "bulk_distinct_recipients_per_hour": 20,
                "on_missing_consent": on_missing,
            },
            "accounts": [{"id": "acme", "logins": ["alice@acme.example"], "uids": [1001]}],
        }
    )
    store, counter = MemoryConsents(granted), MemoryCounter(recent)
    opened: list[MemoryConsents] = []

    def open_store() -> MemoryConsents:
        opened.append(store)
        return store

    check = ConsentCheck(settings.consent, open_store, counter, release=store.close)
    return Pipeline(settings, [RelayCheck(settings.policy.local_domains), check]), store, counter


def send(
    pipeline: Pipeline,
    recipients: Sequence[str],
    headers: Sequence[tuple[str, str]] = (),
    *,
    client: Client = REMOTE,
    login: str | None = "alice@acme.example",
    uid: int | None = None,
) -> tuple[Transaction, Verdict]:
    txn = pipeline.begin(client, login=login, mail_from="news@acme.example")
    txn.uid = uid  # for sendmail(1) mail the adapter reads it from Postfix's queue file
    assert not pipeline.mail(txn).is_final
    for recipient in recipients:
        pipeline.rcpt(txn, recipient)
    for name, value in headers:
        pipeline.header(txn, name, value)
    return txn, pipeline.eom(txn)


def people(count: int) -> list[str]:
    return [f"p{index}@example.org" for index in range(count)]


def grants(recipients: Iterable[str], list_id: str = "") -> set[tuple[str, str, str]]:
    return {("acme", list_id, r) for r in recipients}


def test_personal_mail_needs_no_consent_and_no_database() -> None:
    pipeline, store, counter = build()
    _txn, verdict = send(pipeline, people(2))
    assert verdict.action is Action.CONTINUE
    assert store.queries == []
    assert counter.added == {"acme": people(2)}  # counted towards the hour once accepted


def test_bulk_with_every_consent_is_accepted_with_one_query() -> None:
    pipeline, store, _ = build(grants(people(60)))
    _, verdict = send(pipeline, people(60), [UNSUBSCRIBE])
    assert verdict.action is Action.CONTINUE
    assert len(store.queries) == 1 and len(store.queries[0][1]) == 60


def test_bulk_with_one_recipient_lacking_consent_is_refused() -> None:
    pipeline, _, counter = build(grants(people(59)))
    _, verdict = send(pipeline, people(60), [UNSUBSCRIBE])
    assert verdict.action is Action.REJECT
    assert verdict.reply().startswith(
        "550 5.7.1 Bulk mail from account acme refused: 1 of 60 recipients have no active consent"
    )
    assert "p59@example.org" in verdict.reply()
    assert counter.added == {}  # refused mail does not count towards the hour


def test_bulk_without_list_unsubscribe_is_refused_before_asking_the_ledger() -> None:
    pipeline, store, _ = build(grants(people(60)))
    _, verdict = send(pipeline, people(60))
    assert verdict.reply().startswith(
        "550 5.7.1 Bulk mail from account acme must carry a List-Unsubscribe"
    )
    assert store.queries == []


def test_unusable_list_unsubscribe_is_refused_and_named() -> None:
    pipeline, store, _ = build(grants(people(60)))
    _, verdict = send(pipeline, people(60), [("List-Unsubscribe", "<https:>, <mailto:>")])
    assert verdict.action is Action.REJECT
    assert "names no usable one: <https:>, <mailto:>" in verdict.reply()
    assert store.queries == []


def test_one_click_unsubscribe_is_shown_in_the_decision_log() -> None:
    pipeline, _, _ = build(grants(people(6)))
    one_click = [UNSUBSCRIBE, ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    txn, verdict = send(pipeline, people(6), one_click)
    assert verdict.action is Action.CONTINUE
    trace = txn.scratch[TRACE]
    assert "consent: RFC 8058 one-click unsubscribe <https://acme.example/u/1>" in trace.notes
    txn, _ = send(pipeline, people(6), [UNSUBSCRIBE])
    assert "consent: List-Unsubscribe without RFC 8058 one-click" in txn.scratch[TRACE].notes


def test_list_headers_make_small_mail_bulk_and_scope_the_list() -> None:
    pipeline, store, _ = build(grants(["a@example.org"], "news.acme.example"))
    headers = [("List-Id", "Acme News <News.Acme.Example>"), UNSUBSCRIBE]
    _, verdict = send(pipeline, ["a@example.org"], headers)
    assert verdict.action is Action.CONTINUE
    assert store.queries == [("acme", ["a@example.org"], "news.acme.example")]
    _, verdict = send(
        pipeline, ["a@example.org"], [("List-Id", "<other.acme.example>"), UNSUBSCRIBE]
    )
    assert verdict.action is Action.REJECT


def test_campaign_split_into_small_messages_becomes_bulk() -> None:
    pipeline, _store, counter = build(recent=18)
    assert send(pipeline, people(2))[1].action is Action.CONTINUE  # 18 + 2 = 20 now
    _, verdict = send(pipeline, ["late@example.org"])
    assert verdict.reply().startswith("550 5.7.1 Bulk mail from account acme must carry")
    assert "about 20 different recipients in the last hour" in verdict.reply()
    assert counter.counted == 2


def test_remove_mode_drops_recipients_and_adds_a_header() -> None:
    pipeline, _, counter = build(grants(people(5)), on_missing="remove")
    txn, verdict = send(pipeline, people(8), [UNSUBSCRIBE])
    assert verdict.action is Action.CONTINUE
    assert txn.changes.remove_recipients == people(8)[5:]
    assert txn.changes.add_headers == [(REMOVED_HEADER, "3 recipients without consent")]
    assert counter.added == {"acme": people(5)}


def test_remove_mode_refuses_when_no_recipient_has_consent() -> None:
    pipeline, _, _ = build(on_missing="remove")
    txn, verdict = send(pipeline, people(8), [UNSUBSCRIBE])
    assert verdict.action is Action.REJECT
    assert txn.changes.remove_recipients == []


@pytest.mark.parametrize(
    ("setting", "action"), [("tempfail", Action.TEMPFAIL), ("accept", Action.CONTINUE)]
)
def test_store_errors_follow_on_store_error(setting: str, action: Action) -> None:
    pipeline, store, _ = build(on_store_error=setting)
    store.down = True
    _, verdict = send(pipeline, people(10), [UNSUBSCRIBE])
    assert verdict.action is action
    if action is Action.TEMPFAIL:
        assert verdict.reply().startswith("451 4.3.0")


def test_inbound_list_mail_is_not_judged() -> None:
    pipeline, store, counter = build()
    _, verdict = send(pipeline, ["info@hosting.example"], [("List-Id", "<x.example>")], login=None)
    assert verdict.action is Action.CONTINUE
    assert store.queries == [] and counter.added == {}


def test_bulk_from_a_trusted_sender_with_no_account_is_refused() -> None:
    pipeline, _, _ = build()
    _, verdict = send(pipeline, people(6), [UNSUBSCRIBE], client=TRUSTED, login=None)
    assert verdict.action is Action.REJECT
    assert "belongs to no hosting account" in verdict.reply()
    _, verdict = send(pipeline, people(1), client=TRUSTED, login=None)
    assert verdict.action is Action.CONTINUE


def test_local_submission_is_judged_at_end_of_message() -> None:
    pipeline, _, _ = build(grants(people(5)))
    txn, verdict = send(pipeline, people(6), [UNSUBSCRIBE], client=LOCAL, login=None, uid=1001)
    assert txn.account_id == "acme"
    assert verdict.action is Action.REJECT


def test_close_gives_the_ledger_back() -> None:
    pipeline, store, _ = build(grants(people(6)))
    send(pipeline, people(6), [UNSUBSCRIBE])
    pipeline.close()
    assert store.closed
