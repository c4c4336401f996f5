"""Bulk mail through a real Postfix, the sendwarden milter, Redis and a consent ledger.

The customer logs in with SMTP AUTH (Cyrus SASL) and sends to a remote domain; the
ledger is seeded directly in the SQLite file the milter's config names.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage

import pytest

from sendwarden.consent.model import ConsentStore, EventKind
from sendwarden.consent.store import open_consent_store
from tests.e2e.scenarios import record_consent
from tests.support.rig import Rig, running_rig

LOGIN = "alice@acme.example"
SENDER = "news@acme.example"
ONE_CLICK = "<https://acme.example/unsubscribe/abc>, <mailto:leave@acme.example>"


@pytest.fixture(scope="module")
def shared_rig() -> Iterator[Rig]:
    """One rig for the module (starting Postfix & co. costs seconds); tests write to
    different recipient domains, so their consent records never meet."""
    with running_rig() as rig:
        yield rig


@pytest.fixture
def rig(shared_rig: Rig) -> Rig:
    shared_rig.sink.clear()
    return shared_rig


def open_ledger(rig: Rig) -> ConsentStore:
    """The consent database the milter reads (the rig writes it next to the config)."""
    assert rig.config_path is not None
    return open_consent_store(f"sqlite:///{rig.config_path.parent / 'consent.db'}")


@pytest.fixture
def ledger(rig: Rig) -> Iterator[ConsentStore]:
    store = open_ledger(rig)
    yield store
    store.close()


@pytest.fixture
def readers(request: pytest.FixtureRequest) -> list[str]:
    """60 subscribers on a domain of this test's own."""
    return subscribers(60, request.node.name.replace("_", "-")[:40].strip("-") + ".example")


def subscribers(count: int, domain: str) -> list[str]:
    return [f"reader{index}@{domain}" for index in range(count)]


def newsletter(unsubscribe: bool = True, list_unsubscribe: str = ONE_CLICK) -> bytes:
    message = EmailMessage()
    message["From"] = f"Acme News <{SENDER}>"
    message["To"] = "Acme readers <readers@acme.example>"
    message["Subject"] = "Acme news, March"
    if unsubscribe:
        message["List-Unsubscribe"] = list_unsubscribe
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("This month at Acme...\n")
    return bytes(message)


def send(rig: Rig, recipients: Sequence[str], body: bytes) -> None:
    with rig.smtp(LOGIN) as client:
        client.sendmail(SENDER, list(recipients), body)


def delivered_recipients(rig: Rig, expected: int) -> set[str]:
    """Postfix may split a 60-recipient message into several deliveries to the sink."""
    got: set[str] = set()
    deadline_messages = 1
    while len(got) < expected:
        for delivered in rig.sink.wait_for(deadline_messages, timeout=30):
            got.update(delivered.rcpt_tos)
        deadline_messages += 1
    return got


def refusal(rig: Rig, recipients: Sequence[str], body: bytes) -> str:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(rig, recipients, body)
    code, text = refused.value.smtp_code, refused.value.smtp_error.decode()
    assert code == 550, text
    return text


def test_bulk_mail_with_every_consent_is_delivered(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    record_consent(ledger, EventKind.GRANTED, readers)
    send(rig, readers, newsletter())
    assert delivered_recipients(rig, 60) == set(readers)


def test_bulk_mail_with_one_recipient_lacking_consent_is_refused(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    record_consent(ledger, EventKind.GRANTED, readers[:-1])
    text = refusal(rig, readers, newsletter())
    assert text.startswith("5.7.1 Bulk mail from account acme refused: 1 of 60 recipients")
    assert readers[59] in text
    assert rig.sink.messages == []


def test_bulk_mail_to_a_revoked_recipient_is_refused(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    record_consent(ledger, EventKind.GRANTED, readers)
    record_consent(ledger, EventKind.REVOKED, [readers[17]], days=30)
    text = refusal(rig, readers, newsletter())
    assert "1 of 60 recipients have no active consent" in text
    assert readers[17] in text
    assert rig.sink.messages == []


def test_small_personal_mail_needs_no_consent(rig: Rig) -> None:
    personal = EmailMessage()
    personal["From"] = f"Alice <{LOGIN}>"
    personal["To"] = "bob@remote.example"
    personal["Subject"] = "lunch?"
    personal.set_content("Tomorrow at noon?\n")
    send(rig, ["bob@remote.example", "carol@remote.example"], bytes(personal))
    assert delivered_recipients(rig, 2) == {"bob@remote.example", "carol@remote.example"}


def test_bulk_mail_without_list_unsubscribe_is_refused(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    record_consent(ledger, EventKind.GRANTED, readers)
    text = refusal(rig, readers, newsletter(unsubscribe=False))
    assert text.startswith(
        "5.7.1 Bulk mail from account acme must carry a List-Unsubscribe header (RFC 8058"
    )
    assert rig.sink.messages == []


def test_bulk_mail_whose_list_unsubscribe_has_no_usable_uri_is_refused(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    """Schemes with nothing behind them are no way out, even with every consent on record."""
    record_consent(ledger, EventKind.GRANTED, readers)
    text = refusal(rig, readers, newsletter(list_unsubscribe="<https:>, <mailto:>"))
    assert text.startswith("5.7.1 Bulk mail from account acme must carry a List-Unsubscribe")
    assert "names no usable one: <https:>, <mailto:>" in " ".join(text.split())
    assert rig.sink.messages == []


def test_remove_mode_delivers_only_to_recipients_with_consent(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(consent={"on_missing_consent": "remove"})
    ledger = open_ledger(rig)
    try:
        readers = subscribers(60, "remove-mode.example")
        record_consent(ledger, EventKind.GRANTED, readers[:57])
        send(rig, readers, newsletter())
        assert delivered_recipients(rig, 57) == set(readers[:57])
        headers = rig.sink.messages[0].message
        assert headers["X-Sendwarden-Removed-Recipients"] == "3 recipients without consent"
        (line,) = [line for line in rig.decisions() if line["stage"] == "eom"]
        assert line["removed_recipients"] == readers[57:]  # who, in the decision log
    finally:
        ledger.close()


def test_sendmail_submission_is_judged_at_end_of_message(
    rig: Rig, ledger: ConsentStore, readers: list[str]
) -> None:
    """sendmail(1) (PHP mail()) reaches only non_smtpd_milters: the refusal comes back
    to the sender as a bounce, and no reader gets the message."""
    record_consent(ledger, EventKind.GRANTED, readers[:-1])
    result = rig.sendmail(newsletter(), SENDER, readers, uid=65534)
    assert result.returncode == 0, result.stderr
    (bounce,) = rig.sink.wait_for(1, timeout=30)
    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == (SENDER,)
    unfolded = " ".join(bounce.data.decode("utf-8", "replace").split())
    assert "Bulk mail from account acme refused: 1 of 60 recipients" in unfolded
    assert readers[59] in unfolded
