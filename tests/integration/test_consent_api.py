"""The consent HTTP API over a real ledger (SQLite and PostgreSQL, via ``consent_store``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from sendwarden.config import ApiToken
from sendwarden.consent.api import ANONYMOUS_BODY_BYTES, create_app, hash_token, mint_token
from sendwarden.consent.model import ConsentStore, EventKind
from sendwarden.consent.store import open_consent_store
from sendwarden.store import StoreError

ACME_TOKEN = mint_token()
GLOBEX_TOKEN = mint_token()
STAFF_TOKEN = mint_token()
TOKENS = (
    ApiToken(name="acme-signup", sha256=hash_token(ACME_TOKEN), account="acme"),
    ApiToken(name="globex-signup", sha256=hash_token(GLOBEX_TOKEN), account="globex"),
    ApiToken(name="support", sha256=hash_token(STAFF_TOKEN), role="staff"),
)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(consent_store: ConsentStore) -> Iterator[TestClient]:
    with TestClient(create_app(TOKENS, consent_store, clock=lambda: NOW)) as client:
        yield client


SIGNUP = {
    "recipient": "Carol@Example.ORG",
    "occurred_at": "2026-02-28T09:30:00+01:00",
    "source": "https://acme.example/newsletter",
    "ip": "203.0.113.9",
    "method": "double-opt-in",
    "confirmed_at": "2026-02-28T09:41:00+01:00",
}


def test_signup_is_recorded_for_the_tokens_account(
    api: TestClient, consent_store: ConsentStore
) -> None:
    response = api.post("/v1/consent", json=SIGNUP, headers=auth(ACME_TOKEN))
    assert response.status_code == 201, response.text
    assert response.json() == {
        "account": "acme",
        "recipient": "Carol@example.org",
        "kind": "granted",
        "list_id": "",
        "occurred_at": "2026-02-28T08:30:00.000000Z",
        "recorded_by": "api:acme-signup",
    }
    (stored,) = consent_store.history("Carol@example.org")
    assert stored.event.ip == "203.0.113.9"
    assert stored.event.confirmed_at == datetime(2026, 2, 28, 8, 41, tzinfo=UTC)
    assert consent_store.consenting("acme", ["Carol@example.org"]) == {"Carol@example.org"}
    assert consent_store.consenting("globex", ["Carol@example.org"]) == set()


def test_defaults_time_now_and_single_opt_in(api: TestClient, consent_store: ConsentStore) -> None:
    response = api.post(
        "/v1/consent", json={"recipient": "dan@example.org"}, headers=auth(ACME_TOKEN)
    )
    assert response.status_code == 201, response.text
    (stored,) = consent_store.history("dan@example.org")
    assert stored.event.occurred_at == NOW
    assert stored.event.method == "single-opt-in"
    assert stored.event.ip == ""  # the API server's caller is not the subscriber


def test_unsubscribe_revokes(api: TestClient, consent_store: ConsentStore) -> None:
    api.post("/v1/consent", json=SIGNUP, headers=auth(ACME_TOKEN))
    response = api.post(
        "/v1/unsubscribe",
        json={"recipient": "Carol@example.org", "method": "one-click"},
        headers=auth(ACME_TOKEN),
    )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "revoked"
    kinds = [s.event.kind for s in consent_store.history("Carol@example.org")]
    assert kinds == [EventKind.GRANTED, EventKind.REVOKED]
    assert consent_store.consenting("acme", ["Carol@example.org"]) == set()


def test_list_id_is_stored_in_the_form_the_milter_compares(
    api: TestClient, consent_store: ConsentStore
) -> None:
    body = {"recipient": "eve@example.org", "list_id": "Acme News <News.Acme.Example>"}
    response = api.post("/v1/consent", json=body, headers=auth(ACME_TOKEN))
    assert response.json()["list_id"] == "news.acme.example"
    assert consent_store.consenting("acme", ["eve@example.org"], "news.acme.example")
    assert not consent_store.consenting("acme", ["eve@example.org"], "other.acme.example")


@pytest.mark.parametrize("path", ["/v1/consent", "/v1/unsubscribe"])
@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "missing token"),
        (auth("swt_not-a-configured-token"), 401, "unknown token"),
        ({"Authorization": f"Basic {ACME_TOKEN}"}, 401, "missing token"),
        (auth(STAFF_TOKEN), 403, "staff tokens read records, they do not write them"),
    ],
)
def test_writes_need_an_account_token(
    api: TestClient,
    consent_store: ConsentStore,
    path: str,
    headers: dict[str, str],
    status: int,
    detail: str,
) -> None:
    body = SIGNUP if path == "/v1/consent" else {"recipient": "x@y.example"}
    response = api.post(path, json=body, headers=headers)
    assert response.status_code == status
    assert detail in response.json()["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert consent_store.history("Carol@example.org") == []


def test_an_account_token_cannot_write_another_accounts_records(
    api: TestClient, consent_store: ConsentStore
) -> None:
    response = api.post(
        "/v1/consent", json={**SIGNUP, "account": "globex"}, headers=auth(ACME_TOKEN)
    )
    assert response.status_code == 403
    assert "writes only the records of account acme, not globex" in response.json()["detail"]
    response = api.post(
        "/v1/unsubscribe", json={"recipient": "c@x.example", "account": "globex"},
        headers=auth(ACME_TOKEN),
    )  # fmt: skip
    assert response.status_code == 403
    assert consent_store.history("Carol@example.org") == []
    # The same body with its own account, or none, is fine.
    ok = api.post("/v1/consent", json={**SIGNUP, "account": "acme"}, headers=auth(ACME_TOKEN))
    assert ok.status_code == 201
    assert [s.event.account for s in consent_store.history("Carol@example.org")] == ["acme"]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"recipient": "not-an-address"}, "not an email address"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2099-01-01T00:00:00Z"}, "in the future"),
        ({"method": "bought-a-list"}, "is not a way to record granted consent"),
        ({"method": "double-opt-in", "confirmed_at": None}, "needs confirmed_at"),
        ({"ip": "300.1.2.3"}, "not an IP address"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_records_are_refused_with_a_clear_message(
    api: TestClient, consent_store: ConsentStore, change: dict[str, object], detail: str
) -> None:
    response = api.post("/v1/consent", json={**SIGNUP, **change}, headers=auth(ACME_TOKEN))
    assert response.status_code == 422
    assert detail in response.text
    assert consent_store.history("Carol@example.org") == []


def test_staff_read_the_timeline_with_the_chain_checked(api: TestClient) -> None:
    api.post("/v1/consent", json=SIGNUP, headers=auth(ACME_TOKEN))
    api.post("/v1/unsubscribe", json={"recipient": "Carol@EXAMPLE.org"}, headers=auth(ACME_TOKEN))
    api.post("/v1/consent", json={"recipient": "Carol@example.org"}, headers=auth(GLOBEX_TOKEN))
    response = api.get("/v1/consent/Carol@Example.org", headers=auth(STAFF_TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recipient"] == "Carol@example.org"
    assert [entry["account"] for entry in body["accounts"]] == ["acme", "globex"]
    acme = body["accounts"][0]
    assert [event["kind"] for event in acme["events"]] == ["granted", "revoked"]
    assert acme["events"][0]["source"] == "https://acme.example/newsletter"
    assert acme["status"][0]["consent"] is False
    assert body["accounts"][1]["status"][0]["consent"] is True
    assert body["chain"]["ok"] is True
    only = api.get("/v1/consent/Carol@example.org?account=globex", headers=auth(STAFF_TOKEN))
    assert [entry["account"] for entry in only.json()["accounts"]] == ["globex"]


def test_unknown_address_has_an_empty_timeline(api: TestClient) -> None:
    response = api.get("/v1/consent/nobody@example.org", headers=auth(STAFF_TOKEN))
    assert response.status_code == 200
    assert response.json() == {"recipient": "nobody@example.org", "accounts": [], "chain": None}
    assert api.get("/v1/consent/garbage", headers=auth(STAFF_TOKEN)).status_code == 422


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (auth("swt_wrong"), 401), (auth(ACME_TOKEN), 403), (auth(STAFF_TOKEN), 200)],
)
def test_reading_needs_a_staff_token(api: TestClient, headers: dict[str, str], status: int) -> None:
    response = api.get("/v1/consent/carol@example.org", headers=headers)
    assert response.status_code == status


def test_openapi_spec_is_served(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/consent", "/v1/unsubscribe", "/v1/consent/{recipient}"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


class BrokenStore:
    def append(self, events: object) -> int:
        raise StoreError("consent database", "connection refused")

    def history(self, recipient: str, account: str | None = None) -> list[object]:
        raise StoreError("consent database", "connection refused")


def test_store_failure_is_503() -> None:
    app = create_app(TOKENS, BrokenStore())  # type: ignore[arg-type]
    with TestClient(app) as client:
        response = client.post("/v1/consent", json=SIGNUP, headers=auth(ACME_TOKEN))
        assert response.status_code == 503
        assert "consent database is unavailable" in response.json()["detail"]
        assert response.headers["retry-after"] == "30"
        read = client.get("/v1/consent/carol@example.org", headers=auth(STAFF_TOKEN))
        assert read.status_code == 503


def test_routes_added_later_get_the_limits_too(tmp_path: Path) -> None:
    """The limits are app-level middleware: a route another module adds (a sign-in
    form under /ui, say) lets a stranger send no more than a form's worth."""
    store = open_consent_store(f"sqlite:///{tmp_path / 'consent.db'}")
    app = create_app([], store)

    async def sign_in(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_api_route("/ui/sign-in", sign_in, methods=["POST"])
    try:
        with TestClient(app) as client:
            assert client.post("/ui/sign-in", content=b"x" * 100).json() == {"read": 100}
            over = client.post("/ui/sign-in", content=b"x" * (ANONYMOUS_BODY_BYTES + 1))
            assert over.status_code == 413
    finally:
        store.close()
