"""The support page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``: no browser download): sign in, search a
recipient, read the consent timeline, suspend and lift an account. Any console
error or page error fails the test; screenshots go to docs/screenshots/ for the
support guide (docs/support.md). The API runs under uvicorn on a free port with a
real Redis and an SQLite ledger; the browser may reach loopback only."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn

from sendwarden.alerts.risk import RiskStore
from sendwarden.commands.api import ui_context
from sendwarden.config import Settings, settings_from_mapping
from sendwarden.consent.api import create_app, hash_token
from sendwarden.consent.model import ConsentStore
from sendwarden.consent.records import build_event
from sendwarden.consent.store import open_consent_store
from sendwarden.monitoring import MonitorStore
from sendwarden.ratelimit import counter_from_settings
from sendwarden.store.suspensions import RedisSuspensionStore
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
STAFF_TOKEN = "swt_staff-token-for-the-browser-test"
# A fixed clock for everything the page shows, so the screenshots in docs/ come out the
# same on every run (no churn in the repository).
NOW = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
FLAGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"
)


def settings_for(redis_server: RedisServer, db: Path, **ui: Any) -> Settings:
    return settings_from_mapping(
        {
            "redis": {"url": redis_server.url},
            "consent": {"database": f"sqlite:///{db}"},
            "api": {"tokens": [{"name": "support-alice", "role": "staff",
                                "sha256": hash_token(STAFF_TOKEN)}]},
            "ui": ui,
            "accounts": [{"id": "acme", "recipients_per_hour": 100}, {"id": "globex"}],
        }
    )  # fmt: skip


def record(store: ConsentStore, kind: str, occurred_at: str, **fields: str) -> None:
    event = build_event(
        {"recipient": "carol@example.org", "occurred_at": occurred_at, "kind": kind, **fields},
        account="acme",
        recorded_by="import:signup.csv",
        now=NOW,
    )
    store.append([event])


@contextlib.contextmanager
def running_api(settings: Settings, store: ConsentStore) -> Iterator[str]:
    client = redis.Redis.from_url(settings.redis.url)
    ui = ui_context(settings, store, client, clock=lambda: NOW)
    app = create_app(settings.api.tokens, store, ui=ui)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ui.desk.store.close()
        client.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[Path, ConsentStore]]:
    db = tmp_path / "consent.db"
    store = open_consent_store(f"sqlite:///{db}", timeout_ms=2000, clock=lambda: NOW)
    record(
        store,
        "granted",
        "2026-03-01T10:15:02Z",
        method="double-opt-in",
        source="https://acme.example/newsletter",
        ip="203.0.113.9",
        confirmed_at="2026-03-01T10:17:40Z",
        evidence="confirmation mail <abc@acme.example>",
    )
    record(store, "revoked", "2026-05-02T08:00:00Z", method="unsubscribe-link",
           source="List-Unsubscribe one-click")  # fmt: skip
    yield db, store
    store.close()


def test_support_staff_find_a_recipient_and_suspend_and_lift_an_account(
    redis_server: RedisServer, ledger: tuple[Path, ConsentStore]
) -> None:
    from playwright.sync_api import sync_playwright

    db, store = ledger
    settings = settings_for(redis_server, db)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # The account's hour as the milters left it: 42 recipients, refusals by two rules.
    client = redis.Redis.from_url(settings.redis.url)
    assert counter_from_settings(settings, client).reserve("acme", 42, 100).admitted
    RiskStore(client).record("acme", "forged-sender", 3)
    RiskStore(client).record("acme", "recipient-rate", 1)
    MonitorStore(client).record("acme", "bulk-unsubscribe", 2)
    problems: list[str] = []
    with running_api(settings, store) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        # Nothing but this server: a CDN request would fail the test.
        page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:"))
                else problems.append(f"off-site: {r.url}"))  # fmt: skip

        page.goto(base + "/ui/")
        assert page.url == base + "/ui/login"
        page.screenshot(path=str(SCREENSHOTS / "support-sign-in.png"))
        page.fill("#token", "not-a-token")
        page.keyboard.press("Enter")
        assert "not a staff token" in page.inner_text("[role=alert]")
        assert page.url == base + "/ui/login"
        page.fill("#token", STAFF_TOKEN)
        page.keyboard.press("Enter")  # keyboard only
        page.wait_for_url(base + "/ui/")
        assert "Signed in as support-alice" in page.inner_text("header")

        page.focus("#address")  # autofocused on the page; the keyboard does the rest
        page.keyboard.type("carol@Example.org")
        page.keyboard.press("Enter")
        page.wait_for_selector("#chain-status")
        assert "Chain intact: 2 record(s) checked" in page.inner_text("#chain-status")
        rows = page.locator("tr.event")
        assert rows.count() == 2
        first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
        assert "granted" in first and "double-opt-in" in first and "203.0.113.9" in first
        assert "https://acme.example/newsletter" in first and "abc@acme.example" in first
        assert "revoked" in second and "unsubscribe-link" in second
        assert "no consent (revoked 2026-05-02)" in page.inner_text("ul.status")
        page.screenshot(path=str(SCREENSHOTS / "support-recipient.png"), full_page=True)

        page.click("text=acme")  # the account link of the timeline
        page.wait_for_selector("#suspension")
        assert "42 of 100 recipients (42%)" in page.inner_text("#usage")
        refusals = page.inner_text("#refusals")
        assert (
            "forged-sender: 3 messages with a sender address the account does not own" in refusals
        )
        assert "recipient-rate: 1 recipient over the hourly limit" in refusals
        assert "bulk-unsubscribe: 2" in page.inner_text("#monitored")
        assert "Active" in page.inner_text("#suspension")
        page.focus("#suspend-reason")
        page.keyboard.type("Spam complaint #4711: bulk mail to unsubscribed addresses")
        page.keyboard.press("Enter")
        page.wait_for_selector("#notice")
        suspended = page.inner_text("#suspension")
        assert "by support-alice: Spam complaint #4711" in suspended
        suspensions = RedisSuspensionStore(client)
        current = suspensions.get("acme")
        assert current is not None and current.by == "support-alice"
        page.screenshot(path=str(SCREENSHOTS / "support-account-suspended.png"), full_page=True)

        page.fill("#lift-reason", "Customer removed the list; confirmed by phone")
        page.click("text=Lift the suspension")
        page.wait_for_selector("text=Lifted.")
        assert "Active" in page.inner_text("#suspension")
        history = page.locator("#history tbody tr")
        assert history.count() == 2
        assert (
            "lifted" in history.nth(0).inner_text()
            and "support-alice" in history.nth(0).inner_text()
        )
        assert "suspended" in history.nth(1).inner_text()
        assert suspensions.get("acme") is None
        page.screenshot(path=str(SCREENSHOTS / "support-account-history.png"), full_page=True)

        page.goto(base + "/docs")  # the OpenAPI page with its own assets, no CDN
        try:
            page.wait_for_selector(".swagger-ui .info", timeout=30000)
        except Exception:
            pytest.fail(f"Swagger UI did not render; problems: {problems}")
        assert "sendwarden consent API" in page.inner_text(".swagger-ui .info")
        browser.close()
    client.close()
    assert problems == []


def test_a_trusted_proxy_header_signs_in_only_from_a_trusted_proxy(
    redis_server: RedisServer, ledger: tuple[Path, ConsentStore]
) -> None:
    db, store = ledger

    def home(settings: Settings) -> tuple[int, str]:
        with running_api(settings, store) as base:
            request = urllib.request.Request(base + "/ui/", headers={"X-Remote-User": "bob"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()

    status, text = home(settings_for(redis_server, db, trusted_header="X-Remote-User",
                                     trusted_proxies=["127.0.0.1/32"]))  # fmt: skip
    assert status == 200 and "Signed in as <strong>bob</strong>" in text
    status, text = home(settings_for(redis_server, db, trusted_header="X-Remote-User",
                                     trusted_proxies=["10.0.0.0/8"]))  # fmt: skip
    assert "Staff token" in text and "bob" not in text  # redirected to the sign-in form
