"""The pymilter adapter driven by Milter.testctx.TestCtx (libmilter's callbacks, no MTA)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import Milter
import pytest
from Milter import testctx

from sendwarden.checks.base import Check
from sendwarden.checks.relay import RelayCheck
from sendwarden.checks.suspension import SuspensionCheck
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.milter.adapter import (
    SendwardenMilter,
    client_from_connect,
    set_pipeline_source,
)
from sendwarden.milter.replies import reply_text
from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Transaction
from sendwarden.policy.suspension import Suspension
from sendwarden.policy.verdict import Verdict
from tests.unit.fakes import MemorySuspensions

RAW_SETTINGS: dict[str, Any] = {
    "policy": {"local_domains": ["hosting.example"], "trusted_networks": ["127.0.0.1/32"]},
    "accounts": [{"id": "acme", "logins": ["alice@acme.example"], "domains": ["acme.example"]}],
}
SETTINGS = settings_from_mapping(RAW_SETTINGS)


class Exploding(Check):
    name = "exploding"

    def at_eom(self, txn: Transaction) -> Verdict | None:
        raise KeyError("a bug")


class AddsHeader(Check):
    name = "adds-header"

    def at_eom(self, txn: Transaction) -> Verdict | None:
        txn.changes.add_headers.append(("X-Test", "yes"))
        return None


class MtaCtx(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx takes a no-reply connect (NOREPLY) for a refusal and passes a bare IP;
    an MTA does neither: it passes (ip, port) and goes on."""

    __test__ = False

    def _negotiate(self) -> int:
        # TestCtx hands negotiate() its class-level default_opts list, which negotiate
        # edits in place: every later connection would be offered only what the first
        # one was granted. An MTA offers the same every time.
        testctx.TestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
        return int(super()._negotiate())

    def _connect(
        self, host: str = "client.example", helo: str = "", ip: str = "198.51.100.7"
    ) -> int:
        self._negotiate()
        self._stage = Milter.M_CONNECT
        rc = Milter.connect_callback(self, host, socket.AF_INET, (ip, 4711))
        self._stage = None
        return int(Milter.CONTINUE if rc == Milter.NOREPLY else rc)


def make_ctx(*extra: Check, settings: Settings = SETTINGS) -> tuple[MtaCtx, MemorySuspensions]:
    suspensions = MemorySuspensions()
    checks = [SuspensionCheck(suspensions), RelayCheck(settings.policy.local_domains), *extra]
    pipeline = Pipeline(settings, checks)
    set_pipeline_source(lambda: (pipeline, lambda: None))
    Milter.factory = SendwardenMilter
    return MtaCtx(), suspensions


@pytest.fixture(autouse=True)
def _restore_factory() -> Iterator[None]:
    previous = Milter.factory
    yield
    Milter.factory = previous


def test_negotiates_only_needed_steps() -> None:
    ctx, _ = make_ctx()
    assert ctx._connect(ip="198.51.100.7") == Milter.CONTINUE
    protocol = ctx._protocol
    for skipped in (
        Milter.P_NOHELO,
        Milter.P_NOBODY,
        Milter.P_NOEOH,
        Milter.P_NODATA,
        Milter.P_NOUNKNOWN,
    ):
        assert protocol & skipped
    assert protocol & Milter.P_NR_HDR and protocol & Milter.P_NR_CONN  # no replies awaited
    assert not protocol & Milter.P_NOHDRS and not protocol & Milter.P_NORCPT
    assert not protocol & Milter.P_NR_RCPT  # RCPT can refuse


class NeedsBody(Check):
    name = "needs-body"
    needs_body = True


def test_body_step_only_for_body_checks_whatever_was_negotiated_before() -> None:
    # Without body checks first, then with them (a reload), then without again: each
    # connection negotiates from its own configuration, nothing sticks to a class.
    for needs_body in (False, True, False, True):
        ctx, _ = make_ctx(*([NeedsBody()] if needs_body else []))
        ctx._connect()
        assert bool(ctx._protocol & Milter.P_NOBODY) is not needs_body
        assert bool(ctx._protocol & Milter.P_NR_BODY) is needs_body


def test_data_step_answered_on_inet_sockets_only() -> None:
    inet = settings_from_mapping({**RAW_SETTINGS, "milter": {"socket": "inet:8891@127.0.0.1"}})
    ctx, _ = make_ctx(settings=inet)
    ctx._connect()
    protocol = ctx._protocol
    assert not protocol & Milter.P_NODATA and not protocol & Milter.P_NR_DATA
    ctx, _ = make_ctx()  # the default socket is a unix one
    ctx._connect()
    assert ctx._protocol & Milter.P_NODATA


def test_unauthenticated_relay_is_refused_with_554() -> None:
    ctx, _ = make_ctx()
    ctx._connect(ip="198.51.100.7")
    assert ctx._envfrom("<x@elsewhere.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@remote.example>") == Milter.REJECT
    code, enhanced, text = ctx._reply
    assert (code, enhanced) == ("554", "5.7.1")
    assert "Relaying denied" in text
    assert ctx._envrcpt("<info@hosting.example>") == Milter.CONTINUE


def test_authenticated_sender_relays() -> None:
    ctx, _ = make_ctx()
    ctx._setsymval("{auth_authen}", "alice@acme.example")
    ctx._connect(ip="198.51.100.7")
    assert ctx._envfrom("<a@acme.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@remote.example>") == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE


def test_suspended_account_refused_at_mail() -> None:
    ctx, suspensions = make_ctx()
    suspensions.suspend("acme", Suspension(reason="100% spam", since="2026-11-20T10:00:00Z"))
    ctx._setsymval("{auth_authen}", "alice@acme.example")
    ctx._connect(ip="198.51.100.7")
    assert ctx._envfrom("<a@acme.example>") == Milter.REJECT
    code, enhanced, text = ctx._reply
    assert (code, enhanced) == ("550", "5.7.1")
    assert "100%% spam" in text  # libmilter wants '%' doubled


def test_store_down_gives_451_4_3_0() -> None:
    ctx, suspensions = make_ctx()
    suspensions.down = True
    ctx._setsymval("{auth_authen}", "alice@acme.example")
    ctx._connect(ip="198.51.100.7")
    assert ctx._envfrom("<a@acme.example>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")


def test_a_bug_in_a_check_tempfails_instead_of_crashing() -> None:
    ctx, _ = make_ctx(Exploding())
    ctx._setsymval("{auth_authen}", "alice@acme.example")
    ctx._connect(ip="198.51.100.7")
    ctx._envfrom("<a@acme.example>")
    ctx._envrcpt("<bob@remote.example>")
    assert ctx._eom() == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")


def test_changes_are_applied_on_accept() -> None:
    ctx, _ = make_ctx(AddsHeader())
    ctx._setsymval("{auth_authen}", "alice@acme.example")
    ctx._connect(ip="198.51.100.7")
    ctx._envfrom("<a@acme.example>")
    ctx._envrcpt("<bob@remote.example>")
    ctx._header("Subject", "hi")
    added: list[tuple[str, str, int]] = []
    ctx.addheader = lambda name, value, idx: added.append((name, value, idx))
    assert ctx._eom() == Milter.CONTINUE
    assert added == [("X-Test", "yes", 0)]


@pytest.mark.parametrize(
    ("hostname", "family", "hostaddr", "local"),
    [
        ("localhost", socket.AF_INET, ("127.0.0.1", 0), True),  # Postfix pickup (sendmail)
        ("localhost", socket.AF_INET, ("127.0.0.1", 40000), False),
        ("client.example", socket.AF_INET, ("198.51.100.7", 0), False),
        ("client.example", socket.AF_INET6, ("2001:db8::1", 25, 0, 0), False),
        ("unknown", socket.AF_UNIX, "/tmp/x", False),
    ],
)
def test_local_submission_detection(
    hostname: str, family: int, hostaddr: object, local: bool
) -> None:
    assert client_from_connect(hostname, family, hostaddr).local_submission is local


def test_reply_text_is_one_safe_line() -> None:
    assert reply_text("50%\nquota  ünïcode") == "50%% quota ?n?code"
    assert len(reply_text("x" * 5000)) <= 900
