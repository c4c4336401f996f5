"""The support page's rules without a browser (FastAPI's test client, a real Redis):
sign-in, forged or stale forms, unknown accounts, a reason required, Redis down."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from sendwarden.commands.api import ui_context
from sendwarden.config import settings_from_mapping
from sendwarden.consent.api import create_app, hash_token
from sendwarden.consent.store import open_consent_store
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

STAFF = "swt_staff"
ACCOUNT_TOKEN = "swt_account"


@contextlib.contextmanager
def open_browser(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_from_mapping(
        {
            "redis": {"url": redis_url, "timeout_ms": 300},
            "consent": {"database": f"sqlite:///{tmp_path / 'c.db'}"},
            "api": {"tokens": [
                {"name": "bob", "role": "staff", "sha256": hash_token(STAFF)},
                {"name": "acme-site", "account": "acme", "sha256": hash_token(ACCOUNT_TOKEN)},
            ]},
            "accounts": [{"id": "acme"}],
        }
    )  # fmt: skip
    store = open_consent_store(f"sqlite:///{tmp_path / 'c.db'}", timeout_ms=1000)
    client = redis.Redis.from_url(redis_url, socket_timeout=0.3, socket_connect_timeout=0.3)
    ui = ui_context(settings, store, client)
    app = create_app(settings.api.tokens, store, ui=ui)
    with TestClient(app, base_url="http://testserver") as test_client:
        yield test_client
    ui.desk.store.close()
    client.close()
    store.close()


@pytest.fixture
def browser(redis_server: RedisServer, tmp_path: Path) -> Iterator[TestClient]:
    with open_browser(redis_server.url, tmp_path) as test_client:
        yield test_client


def sign_in(browser: TestClient, token: str = STAFF) -> str:
    """Sign in; the account page's form token."""
    browser.post("/ui/login", data={"token": token})
    page = browser.get("/ui/account", params={"id": "acme"})
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    return found.group(1) if found else ""


def test_pages_need_a_staff_sign_in(browser: TestClient) -> None:
    for path in ("/ui/", "/ui/recipient?address=a@b.example", "/ui/account?id=acme"):
        response = browser.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert "not a staff token" in browser.post("/ui/login", data={"token": ACCOUNT_TOKEN}).text
    assert browser.get("/ui/", follow_redirects=False).status_code == 303
    sign_in(browser)
    home = browser.get("/ui/")
    assert home.status_code == 200 and "Signed in as <strong>bob</strong>" in home.text
    assert "default-src 'none'" in home.headers["content-security-policy"]


def test_a_change_needs_the_session_form_token_and_a_reason(
    browser: TestClient, redis_server: RedisServer
) -> None:
    suspensions = RedisSuspensionStore(redis.Redis.from_url(redis_server.url))
    csrf = sign_in(browser)
    assert csrf
    forged = browser.post("/ui/account/suspend", data={"id": "acme", "reason": "x" * 10,
                                                       "csrf": "0" * 64})  # fmt: skip
    assert forged.status_code == 403 and suspensions.get("acme") is None
    no_reason = browser.post("/ui/account/suspend", data={"id": "acme", "reason": " ",
                                                          "csrf": csrf})  # fmt: skip
    assert "Give a reason" in no_reason.text and suspensions.get("acme") is None
    unknown = browser.post("/ui/account/suspend", data={"id": "nobody", "reason": "spam run",
                                                        "csrf": csrf})  # fmt: skip
    assert unknown.status_code == 404
    done = browser.post("/ui/account/suspend", data={"id": "acme", "reason": "spam run",
                                                     "csrf": csrf})  # fmt: skip
    assert "Suspended." in done.text
    suspension = suspensions.get("acme")
    assert suspension is not None and suspension.by == "bob" and suspension.reason == "spam run"

    browser.post("/ui/logout", data={"csrf": csrf})  # the old session is gone with its token
    lift = {"id": "acme", "reason": "ok now", "csrf": csrf}
    stale = browser.post("/ui/account/lift", data=lift, follow_redirects=False)
    assert stale.status_code == 303 and suspensions.get("acme") is not None


def test_an_unknown_account_and_a_bad_address_are_said_plainly(browser: TestClient) -> None:
    sign_in(browser)
    missing = browser.get("/ui/account", params={"id": "nobody"})
    assert missing.status_code == 404 and "No account &#39;nobody&#39;" in missing.text
    bad = browser.get("/ui/recipient", params={"address": "not an address"})
    assert bad.status_code == 422


def test_redis_down_is_a_clear_page_not_a_traceback(tmp_path: Path) -> None:
    with open_browser(f"redis://127.0.0.1:{free_port()}/0", tmp_path) as browser:
        sign_in(browser)
        page = browser.get("/ui/account", params={"id": "acme"})
    assert page.status_code == 503 and "redis is unavailable" in page.text
