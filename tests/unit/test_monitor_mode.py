"""Monitor-only mode, decided once in the pipeline: which refusals are watched, and
that a watched refusal lets the mail pass, is logged as ``monitor`` and reaches only
monitor observers."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import Account, ConfigError, settings_from_mapping
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.monitor import CHECK_RULES, MONITORABLE, is_monitored
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import CONTINUE, Action, Verdict, reject, tempfail
from sendwarden.store import StoreError
from tests.unit.fakes import MemorySuspensions

REMOTE = Client(address=ipaddress.ip_address("198.51.100.7"), hostname="client.example", port=4711)
FORGED = reject("forged-sender", "550", "5.7.1", "no")
WATCHED_ACCOUNT = Account(id="trial", monitor_only=True)
PLAIN_ACCOUNT = Account(id="acme")


@pytest.mark.parametrize(
    ("verdict", "check", "watched", "account", "expected"),
    [
        (FORGED, "identity", ["identity"], PLAIN_ACCOUNT, True),  # by check name
        (FORGED, "identity", ["forged-sender"], PLAIN_ACCOUNT, True),  # by rule name
        (FORGED, "identity", ["impersonation"], PLAIN_ACCOUNT, False),  # another rule
        (FORGED, "identity", [], WATCHED_ACCOUNT, True),  # a watched account
        (FORGED, "identity", [], None, False),
        (
            tempfail("recipient-rate", "451", "4.7.1", "x"),
            "recipient-rate",
            [],
            WATCHED_ACCOUNT,
            True,
        ),
        # Not judgements of the mail: never watched, whatever the settings.
        (
            tempfail("store-unavailable", "451", "4.3.0", "x"),
            "consent",
            ["consent"],
            WATCHED_ACCOUNT,
            False,
        ),
        (
            tempfail("internal-error", "451", "4.3.0", "x"),
            "identity",
            ["identity"],
            WATCHED_ACCOUNT,
            False,
        ),
        (CONTINUE, "identity", ["identity"], WATCHED_ACCOUNT, False),
        (Verdict(Action.ACCEPT, "x"), "identity", ["identity"], WATCHED_ACCOUNT, False),
    ],
)
def test_which_refusals_are_watched(
    verdict: Verdict, check: str, watched: list[str], account: Account | None, expected: bool
) -> None:
    assert is_monitored(verdict, check, watched, account) is expected


@given(
    rule=st.text(min_size=1, max_size=30).filter(lambda text: text not in MONITORABLE),
    check=st.sampled_from(sorted(CHECK_RULES)),
)
def test_an_unknown_rule_is_never_watched(rule: str, check: str) -> None:
    """A check's name does not turn a rule it does not own (store failures, internal
    errors, anything new) into a watched one: such refusals always refuse."""
    verdict = tempfail(rule, "451", "4.3.0", "x")
    assert not is_monitored(verdict, check, [check, *MONITORABLE], WATCHED_ACCOUNT)


def test_an_unknown_name_in_monitor_only_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"policy": {"monitor_only": ["identity", "idnetity"]}})
    assert caught.value.key == "policy.monitor_only[1]"


class Observer:
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.monitored: list[str] = []

    def observe(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        if verdict.is_final:
            self.refused.append(verdict.rule)

    def observe_monitored(self, txn: Transaction, stage: str, verdict: Verdict) -> None:
        self.monitored.append(f"{stage}:{verdict.rule}")


def pipeline(monitor_only: list[str], account_monitor: bool = False) -> tuple[Pipeline, Observer]:
    settings = settings_from_mapping(
        {
            "policy": {
                "local_domains": ["hosting.example"],
                "trusted_networks": [],
                "monitor_only": monitor_only,
            },
            "accounts": [
                {
                    "id": "acme",
                    "logins": ["alice@acme.example"],
                    "domains": ["acme.example"],
                    "monitor_only": account_monitor,
                }
            ],
        }
    )
    suspensions = MemorySuspensions()
    suspensions.suspend("acme", Suspension(reason="abuse", since="2026-01-01T00:00:00Z"))
    observer = Observer()
    checks = [SuspensionCheck(suspensions), RelayCheck(settings.policy.local_domains)]
    return Pipeline(settings, checks, observers=[observer]), observer


def test_a_watched_refusal_passes_is_logged_as_monitor_and_the_rest_still_refuses(
    decisions: list[dict[str, Any]],
) -> None:
    pipe, observer = pipeline(["suspended"])
    txn = pipe.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert pipe.mail(txn) is CONTINUE  # suspended, but watched: MAIL passes
    assert pipe.rcpt(txn, "bob@remote.example") is CONTINUE
    assert pipe.eom(txn).action is Action.CONTINUE
    lines = decisions
    assert [(line["stage"], line["verdict"], line["rule"]) for line in lines] == [
        ("mail", "monitor", "suspended"),
        ("eom", "continue", None),
    ]
    assert lines[0]["reply"].startswith("550 5.7.1")
    assert lines[1]["monitored"] == ["suspended"]
    assert observer.monitored == ["mail:suspended"] and observer.refused == []

    # Relay is not watched: a stranger relaying is still refused.
    stranger = pipe.begin(REMOTE, login=None, mail_from="x@else.example")
    assert pipe.mail(stranger) is CONTINUE
    assert pipe.rcpt(stranger, "y@remote.example").action is Action.REJECT
    assert observer.refused == ["relay"]


def test_a_watched_account_passes_every_rule() -> None:
    pipe, observer = pipeline([], account_monitor=True)
    txn = pipe.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert pipe.mail(txn) is CONTINUE
    assert observer.monitored == ["mail:suspended"]


def test_a_store_failure_is_not_watched() -> None:
    class Broken(SuspensionCheck):
        def at_mail(self, txn: Transaction) -> Verdict | None:
            raise StoreError("redis", "down")

    settings = settings_from_mapping(
        {"policy": {"monitor_only": ["suspended"]},
         "accounts": [{"id": "acme", "logins": ["alice@acme.example"], "monitor_only": True}]}
    )  # fmt: skip
    pipe = Pipeline(settings, [Broken(MemorySuspensions())])
    txn = pipe.begin(REMOTE, login="alice@acme.example", mail_from="alice@acme.example")
    assert pipe.mail(txn).rule == "store-unavailable"
