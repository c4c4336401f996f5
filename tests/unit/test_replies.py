"""Replies a customer reads: what happened and what to do, no internals (issue 14.6).

The store-unavailable reply never names the store or its error (those go to the
decision's notes); a staff reason never reaches the customer; the client is named once
however the MTA spelled its host name.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from sendwarden.checks.base import Check
from sendwarden.config import settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.relay import relay_verdict
from sendwarden.policy.suspension import RATE_LIMIT_SUSPENDER, Suspension, suspension_verdict
from sendwarden.policy.verdict import Verdict
from sendwarden.store import StoreError

INTERNAL_WORDS = ("redis", "postgres", "sqlite", "psycopg", "traceback", "errno", "timeout")

addresses = st.one_of(
    st.ip_addresses(v=4).map(ipaddress.IPv4Address),
    st.ip_addresses(v=6).map(ipaddress.IPv6Address),
)


@given(addresses, st.sampled_from(["", "unknown", "[{}]", "{}", " [{}] "]))
def test_a_client_without_a_name_is_named_once(address: object, spelling: str) -> None:
    """Postfix gives a client without reverse DNS the host name "[ADDRESS]"."""
    client = Client(address=address, hostname=spelling.format(address))  # type: ignore[arg-type]
    assert str(client) == f"[{address}]"
    verdict = relay_verdict(Transaction(client), "bob@remote.example", ())
    assert verdict is not None and verdict.text.count(str(address)) == 1


def test_a_named_client_shows_name_and_address() -> None:
    client = Client(address=ipaddress.ip_address("192.0.2.7"), hostname="mx.client.example")
    assert str(client) == "mx.client.example[192.0.2.7]"


class _Broken(Check):
    name = "suspended"

    def __init__(self, error: StoreError) -> None:
        self.error = error

    def at_mail(self, txn: Transaction) -> Verdict | None:
        raise self.error


@given(
    st.sampled_from(["redis", "consent database", "postgresql"]),
    st.text(alphabet="#@XQ_/%0123456789", min_size=4, max_size=80),
)
def test_a_store_outage_reply_names_no_internals(backend: str, detail: str) -> None:
    settings = settings_from_mapping({"accounts": [{"id": "acme", "logins": ["a@acme.example"]}]})
    pipeline = Pipeline(settings, [_Broken(StoreError(backend, detail))])
    txn = pipeline.begin(
        Client(ipaddress.ip_address("198.51.100.7")), login="a@acme.example", mail_from=""
    )
    verdict = pipeline.mail(txn)
    assert verdict.reply().startswith("451 4.3.0 Temporary problem checking the sending policy")
    assert "try again later" in verdict.text
    lowered = verdict.text.lower()
    assert not any(word in lowered for word in INTERNAL_WORDS), verdict.text
    assert detail not in verdict.text  # the store's error is for the log only


# Staff reasons in characters the fixed reply text never uses, so "not in the reply" means it.
staff_reasons = st.text(alphabet="#@XQ_/", min_size=3, max_size=200)


@given(staff_reasons, st.text(max_size=30).filter(lambda by: by != RATE_LIMIT_SUSPENDER))
def test_a_staff_reason_never_reaches_the_customer(reason: str, by: str) -> None:
    suspension = Suspension(reason=reason, since="2026-01-01T00:00:00Z", by=by)
    verdict = suspension_verdict("acme", suspension)
    assert verdict is not None
    assert reason not in verdict.text
    assert "Contact the provider's support" in verdict.text


def test_the_rate_limiter_s_reason_is_the_customer_s_to_read() -> None:
    reason = "its limit of 500 recipients per hour was reached 5 times within 24 hours"
    suspension = Suspension(reason=reason, since="2026-01-01T00:00:00Z", by=RATE_LIMIT_SUSPENDER)
    verdict = suspension_verdict("acme", suspension)
    assert verdict is not None and reason in verdict.text
