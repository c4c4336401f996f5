"""Trust only what is proven, through a real Postfix: sendmail(1) mail is attributed
by the uid Postfix recorded whatever the submitter wrote, proven senders no account
lists are limited at the default, a stranger's mail spends no customer's quota, and
a trusted host with no account can neither use a customer's domain nor get its mail
signed with the customer's key.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from sendwarden.dkim.keys import generate_key
from tests.e2e.test_milter_basics import sendwarden_cli, wait_for_decision
from tests.support.rig import Rig, start_rig
from tests.support.sink import Delivered

DEFAULT_LIMIT = 3
TRUSTED_HOST = "127.0.0.2"  # a web server on trusted_networks; test clients are 127.0.0.1
ACCOUNTS = [
    {"id": "acme", "logins": ["alice@acme.example"], "uids": [65534],
     "domains": ["acme.example"], "recipients_per_hour": 5000},
    {"id": "globex", "logins": ["bob@globex.example"], "domains": ["globex.example"],
     "recipients_per_hour": 2},
]  # fmt: skip
SASL_USERS = {
    "alice@acme.example": "alice-secret",
    "bob@globex.example": "bob-secret",
    "mallory@freemail.example": "mallory-secret",  # a real login no account lists
}
IMITATION = "(Postfix, from userid 65534)"  # acme's uid, written by someone else


def message(from_: str, *headers: str) -> bytes:
    lines = [*headers, f"From: {from_}", "To: carol@remote.example", "Subject: e2e"]
    return ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    key_file = tmp_path_factory.mktemp("dkim") / "acme.key"
    generate_key(key_file)
    dkim_table = {"domain": "acme.example", "selector": "e2e", "key_file": str(key_file)}
    policy = {
        "provider_hostnames": ["mta.sendwarden.test"],
        "trusted_networks": [f"{TRUSTED_HOST}/32"],
        "recipients_per_hour": DEFAULT_LIMIT,
    }
    with contextlib.ExitStack() as stack:
        started = start_rig(
            stack,
            accounts=ACCOUNTS,
            sasl_users=SASL_USERS,
            policy=policy,
            config_extra={"dkim": dkim_table, "ratelimit": {"suspend_after": 0}},
        )
        try:
            yield started
        finally:
            print(started.report())


@pytest.fixture(autouse=True)
def clean_sink(rig: Rig) -> None:
    rig.sink.clear()


def decision_for(rig: Rig, queue_id: str) -> dict[str, Any]:
    return wait_for_decision(rig, stage="eom", queue_id=queue_id)


def queue_id_of(delivered: Delivered) -> str:
    """Postfix's queue id, from its own Received line (the first) of a delivered message."""
    match = re.search(r"\bid (\w+)", str(delivered.message.get_all("Received")[0]))
    assert match is not None
    return match.group(1)


# -- sendmail(1): the uid Postfix recorded, whatever the submitter wrote ---------------


@pytest.mark.parametrize(
    ("uid", "account", "domain"), [(65534, "acme", "acme.example"), (1, "uid:1", "shop.example")]
)
def test_sendmail_imitating_postfixs_received_text_is_attributed_by_its_real_uid(
    rig: Rig, uid: int, account: str, domain: str
) -> None:
    """Full name, an envelope recipient and headers all claim acme's uid 65534."""
    sender = f"web{uid}@{domain}"
    result = rig.sendmail(
        message(sender, f"Received: by web.example {IMITATION}"),  # not the provider's host
        sender,
        ["carol@remote.example", f'"{IMITATION}"@remote.example'],
        uid=uid,
        args=("-i", "-F", f"Web Shop {IMITATION}"),
    )
    assert result.returncode == 0, result.stderr
    (delivered,) = rig.sink.wait_for(1)
    assert IMITATION in delivered.data.decode()  # the imitation went through untouched
    record = wait_for_decision(rig, stage="eom", mail_from=sender)
    assert (record["account"], record["account_source"]) == (account, "uid")
    assert record["verdict"] == "continue"


def test_an_envelope_over_64_kb_is_attributed_by_its_real_uid(rig: Rig) -> None:
    recipients = [f"{'r' * 60}{i:04}@{'long-' * 30}remote.example" for i in range(300)]
    result = rig.sendmail(
        message("web@acme.example"),
        "web@acme.example",
        recipients,
        args=("-i", "-F", IMITATION * 20),
        uid=1,  # not acme's: the imitations must not make it acme's
    )
    assert result.returncode == 0, result.stderr
    assert sum(len(r) for r in recipients) > 64 * 1024
    record = wait_for_decision(rig, stage="eom", recipients=300)
    assert (record["account"], record["account_source"]) == ("uid:1", "uid")
    # uid 1 is an account of its own at the default limit: 300 recipients never fit.
    assert record["reply"].startswith("550 5.7.1 Account uid:1 may send to at most 3")


# -- proven senders no account lists, and strangers ------------------------------------


def test_an_unknown_login_is_limited_at_the_default_limit(rig: Rig) -> None:
    recipients = [f"r{i}@remote.example" for i in range(DEFAULT_LIMIT + 1)]
    with rig.smtp("mallory@freemail.example") as client:
        refused = client.sendmail(
            "mallory@freemail.example", recipients, message("mallory@freemail.example")
        )
    assert list(refused) == recipients[DEFAULT_LIMIT:]
    code, text = refused[recipients[-1]]
    assert code == 451
    assert text.startswith(
        b"4.7.1 Account login:mallory@freemail.example has reached its limit of 3 recipients"
    )
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.rcpt_tos == tuple(recipients[:DEFAULT_LIMIT])
    status = sendwarden_cli(rig, "ratelimit", "status", "login:mallory@freemail.example")
    assert "3 of 3 recipients used" in status.stdout, status.stdout + status.stderr


def test_a_strangers_inbound_mail_leaves_the_customers_quota_untouched(rig: Rig) -> None:
    for _ in range(3):  # more than globex's limit of 2, in globex's name
        with rig.smtp() as client:
            client.sendmail(
                "bob@globex.example",
                ["info@hosting.example", "sales@hosting.example"],
                message("bob@globex.example"),
            )
    rig.sink.wait_for(3)
    record = wait_for_decision(rig, stage="eom", mail_from="bob@globex.example")
    assert (record["account"], record["account_source"]) == (None, None)
    status = sendwarden_cli(rig, "ratelimit", "status", "globex")
    assert "0 of 2 recipients used" in status.stdout, status.stdout + status.stderr
    rig.sink.clear()
    with rig.smtp("bob@globex.example") as client:  # globex's own mail is not deferred
        refused = client.sendmail(
            "bob@globex.example", ["a@remote.example", "b@remote.example"],
            message("bob@globex.example"),
        )  # fmt: skip
    assert refused == {}
    rig.sink.wait_for(1)


# -- a trusted host with no account ----------------------------------------------------


def test_a_trusted_host_with_no_account_cannot_use_a_customers_domain(rig: Rig) -> None:
    for mail_from, from_ in [
        ("alice@acme.example", "alice@acme.example"),
        ("news@shop.example", "Alice <alice@acme.example>"),
        ("alice@acme.example", "news@shop.example"),
    ]:
        with (
            rig.smtp(source=TRUSTED_HOST) as client,
            pytest.raises(smtplib.SMTPDataError) as refused,
        ):
            client.sendmail(mail_from, ["carol@remote.example"], message(from_))
        assert refused.value.smtp_code == 550
        text = refused.value.smtp_error.decode()
        assert text.startswith("5.7.1 Impersonation refused") and "acme.example" in text
        assert f"host:{TRUSTED_HOST}" in text
    # Its own mail goes out, counted as its own account, and is not signed.
    with rig.smtp(source=TRUSTED_HOST) as client:
        client.sendmail("news@shop.example", ["carol@remote.example"], message("news@shop.example"))
    (delivered,) = rig.sink.wait_for(1)
    assert delivered.message["DKIM-Signature"] is None
    record = decision_for(rig, queue_id_of(delivered))
    assert (record["account"], record["account_source"]) == (
        f"host:{TRUSTED_HOST}", "trusted-network"
    )  # fmt: skip


def test_the_customer_itself_is_signed_with_its_key(rig: Rig) -> None:
    """The key is live: the proven account's own mail is signed with it."""
    with rig.smtp("alice@acme.example") as client:
        client.sendmail(
            "alice@acme.example", ["carol@remote.example"], message("alice@acme.example")
        )
    (delivered,) = rig.sink.wait_for(1)
    signature = delivered.message["DKIM-Signature"]
    assert signature is not None and "d=acme.example" in signature.replace(" ", "")


def test_unknown_senders_refuse_mode(make_rig: Any) -> None:
    """policy.unknown_senders = "refuse": 550 5.7.1 at MAIL for an unlisted login."""
    refusing = make_rig(
        accounts=ACCOUNTS[:1], sasl_users=SASL_USERS, policy={"unknown_senders": "refuse"}
    )
    with (
        refusing.smtp("mallory@freemail.example") as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("m@freemail.example", ["a@remote.example"], message("m@freemail.example"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Sender refused: the login mallory@")
    with refusing.smtp("alice@acme.example") as client:
        assert (
            client.sendmail("alice@acme.example", ["a@remote.example"], message("a@acme.example"))
            == {}
        )
    refusing.sink.wait_for(1)
