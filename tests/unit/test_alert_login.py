"""sendwarden's own alert mail is recognised by the alert service's SASL login, which
only the MTA can prove (issue 14.1): never by a header, never by an address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.checks.identity import IdentityCheck
from sendwarden.config import ConfigError, Settings, settings_from_mapping
from sendwarden.decisionlog import TRACE, RuleTrace
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.forged_headers import ALERT_HEADER

ALERTS_LOGIN = "Alerts@Hosting.Example"
ALERT = (ALERT_HEADER, "new; dnsbl:192.0.2.10:zen.example")


def settings() -> Settings:
    return settings_from_mapping(
        {
            "alerts": {"smtp_login": ALERTS_LOGIN, "smtp_password_file": "/etc/sendwarden/a"},
            "accounts": [{"id": "acme", "logins": ["alice@acme.example"]}],
        }
    )


def transaction(login: str | None, headers: list[tuple[str, str]]) -> Transaction:
    txn = Transaction(
        client=Client(ipaddress.ip_address("127.0.0.1"), "localhost"),
        trusted=True,
        login=login,
        mail_from="sendwarden@hosting.example",
    )
    txn.headers = [("From", "sendwarden@hosting.example"), *headers]
    txn.scratch[TRACE] = RuleTrace()
    return txn


def test_the_alert_login_may_carry_the_alert_header() -> None:
    check = IdentityCheck(settings())
    assert check.at_eom(transaction("alerts@hosting.example", [ALERT])) is None


def test_only_the_alert_header_not_every_sendwarden_header() -> None:
    check = IdentityCheck(settings())
    verdict = check.at_eom(transaction(ALERTS_LOGIN, [ALERT, ("X-Sendwarden-Checked", "yes")]))
    assert verdict is not None and "X-Sendwarden-Checked" in verdict.text


@given(
    login=st.one_of(st.none(), st.sampled_from(["alice@acme.example", "alerts", "alerts@hosting"])),
    name=st.sampled_from([ALERT_HEADER, ALERT_HEADER.lower(), ALERT_HEADER.upper()]),
    sender=st.sampled_from(["sendwarden@hosting.example", "alerts@hosting.example"]),
)
def test_nobody_else_may_carry_it(login: str | None, name: str, sender: str) -> None:
    """Trusted network, the alert service's sender address, any spelling of the header:
    without the login, refused."""
    txn = transaction(login, [(name, "new; x")])
    txn.mail_from = sender
    verdict = IdentityCheck(settings()).at_eom(txn)
    assert verdict is not None and verdict.code == "550"


def test_no_account_may_hold_the_alert_login() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.smtp_login, sendwarden's own login"):
        settings_from_mapping(
            {
                "alerts": {"smtp_login": "a@x.example", "smtp_password_file": "/etc/a"},
                "accounts": [{"id": "acme", "logins": ["A@x.example"]}],
            }
        )
    with pytest.raises(ConfigError, match=r"alerts\.smtp_password_file"):
        settings_from_mapping({"alerts": {"smtp_login": "a@x.example"}})


def test_refusing_unlisted_senders_does_not_refuse_the_alert_service() -> None:
    """With policy.unknown_senders = "refuse", every unlisted login is refused, but the
    alert service's login (which no account may list) is sendwarden's own."""
    from sendwarden.pipeline import Pipeline
    from sendwarden.policy.unknown import unknown_sender_verdict

    pipeline = Pipeline(settings(), [])
    remote = Client(ipaddress.ip_address("198.51.100.7"), "client.example")
    own = pipeline.begin(remote, login="ALERTS@hosting.example", mail_from="sw@hosting.example")
    assert unknown_sender_verdict(own, "refuse", ALERTS_LOGIN) is None
    other = pipeline.begin(remote, login="mallory@hosting.example", mail_from="m@hosting.example")
    verdict = unknown_sender_verdict(other, "refuse", ALERTS_LOGIN)
    assert verdict is not None and verdict.code == "550"
