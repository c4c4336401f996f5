"""End-to-end fixtures: a private Postfix, a milter, Redis and an SMTP sink, all real.

Every test in this directory is marked ``e2e``. They are skipped only where they cannot
run at all: not root (Postfix is started with its own queue, and sendmail(1) runs as
another uid) or no ``postfix`` binary. Anything else missing is a failure, not a skip.

Usage::

    def test_relay_is_refused(make_rig):
        rig = make_rig(accounts=[...], policy={"recipients_per_hour": 5})
        with rig.smtp() as client:                      # unauthenticated
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("x@else.example", ["y@remote.example"], b"...")

    def test_login(rig):                                # default config, sendwarden milter
        with rig.smtp("alice@acme.example") as client:  # password from rig.sasl_users
            client.sendmail(...)
        rig.sink.wait_for(1)

    def test_local(rig):
        result = rig.sendmail(b"Subject: x\\r\\n\\r\\nbody\\r\\n", "web@acme.example",
                              ["bob@remote.example"], uid=65534)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.rig import Rig, start_rig

E2E_DIR = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "e2e tests need root: a private Postfix and sendmail(1) as another uid"
    if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
        return "the postfix binary is missing (apt install postfix)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests ``e2e`` (and skip them where they cannot run)."""
    reason = _skip_reason()
    for item in items:
        if E2E_DIR not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    """Factory: ``make_rig(**kwargs) -> Rig``, kwargs as ``tests.support.rig.start_rig``.

    milter="sendwarden" (default) | "noop" | "none" | "noop-proxy" (Exim); accounts, policy,
    consent, config_extra, local_domains, sasl_users ({login: password}), verdicts (noop only),
    postfix_main_cf, with_redis, milter_env. Everything started is stopped after the test
    in reverse order (Postfix, milter, sink, Redis), also when the test fails; the logs
    of every part are printed then, so a failing test shows them.
    """
    rigs: list[Rig] = []
    with contextlib.ExitStack() as stack:

        def factory(**kwargs: Any) -> Rig:
            rig = start_rig(stack, **kwargs)
            rigs.append(rig)
            return rig

        try:
            yield factory
        finally:
            for rig in rigs:
                print(rig.report())


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    """The sendwarden milter with the default test config (account "acme")."""
    return make_rig()


@pytest.fixture
def noop_rig(make_rig: Callable[..., Rig]) -> Rig:
    """The recording no-op milter instead of sendwarden: tests of the harness itself."""
    return make_rig(milter="noop")
