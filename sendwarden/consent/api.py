"""The consent HTTP API (FastAPI): an account's signup and unsubscribe pages record
consent, support staff read the evidence.

- ``POST /v1/consent``: record an opt-in (account token: only its own account).
- ``POST /v1/unsubscribe``: record an unsubscribe (account token).
- ``GET /v1/consent/{recipient}``: the evidence timeline (staff token, read-only).
- ``GET /openapi.json``, ``/docs``: the spec.

Tokens travel as ``Authorization: Bearer TOKEN``; the config holds only their
SHA-256, compared in constant time. Every record goes through the same validator
as an import (:func:`sendwarden.consent.records.build_event`). Endpoints are plain
``def`` functions: FastAPI runs them in its thread pool, so a blocking database
call never stalls the event loop (the store's connection pool serves the
threads); a store that is unreachable answers 503.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sendwarden import __version__
from sendwarden.config import ApiToken
from sendwarden.consent.ledger import canonical_time
from sendwarden.consent.model import ConsentStore, EventKind, NewEvent
from sendwarden.consent.records import (
    GRANT_METHODS,
    REVOKE_METHODS,
    RecordError,
    build_event,
    normalise_recipient,
)
from sendwarden.consent.timeline import render_dict
from sendwarden.policy.consent import normalise_list_id
from sendwarden.store import StoreError

TOKEN_PREFIX = "swt_"
Clock = Callable[[], datetime]


# -- tokens ----------------------------------------------------------------------


def mint_token() -> str:
    """A new random bearer token (256 bits); only its hash is ever stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 (hex) the config keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenRing:
    """The configured tokens, looked up by hash in constant time."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def identify(self, presented: str) -> ApiToken | None:
        """The token presented, or None. Compares against every configured hash with
        ``hmac.compare_digest``, so timing tells nothing about which one nearly matched."""
        digest = hash_token(presented)
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return found


# -- request and response bodies ---------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: str = Field(
        min_length=3, max_length=320, description="The subscriber's address.",
        examples=["carol@example.org"],
    )  # fmt: skip
    occurred_at: datetime | None = Field(
        default=None,
        description="When the subscriber acted (ISO 8601; without an offset it is UTC). "
        "Default: now.",
        examples=["2026-03-01T10:15:02Z"],
    )
    list_id: str = Field(
        default="",
        max_length=255,
        description="The List-Id this is about ('Acme News <news.acme.example>' or "
        "'news.acme.example'); empty: all of the account's mail.",
    )
    source: str = Field(
        default="", max_length=2000, description="Where: the signup page URL or form name."
    )
    ip: str = Field(
        default="",
        max_length=64,
        description="The subscriber's IP address as your web server saw it (not the "
        "address of the server calling this API).",
    )
    evidence: str = Field(
        default="", max_length=4000, description="Free text or a reference, e.g. a Message-ID."
    )
    account: str | None = Field(
        default=None,
        description="Optional; must be the token's own account when given.",
    )


class ConsentIn(_Record):
    """An opt-in, as the account's signup page saw it."""

    method: str = Field(default="single-opt-in", description=f"One of: {', '.join(GRANT_METHODS)}.")
    confirmed_at: datetime | None = Field(
        default=None,
        description="Double opt-in: when the confirmation link was followed (ISO 8601).",
    )


class UnsubscribeIn(_Record):
    """An unsubscribe, as the account's unsubscribe page (or RFC 8058 one-click POST) saw it."""

    method: str = Field(
        default="unsubscribe-link", description=f"One of: {', '.join(REVOKE_METHODS)}."
    )


class RecordedOut(BaseModel):
    account: str
    recipient: str
    kind: str
    list_id: str
    occurred_at: str
    recorded_by: str


class ErrorOut(BaseModel):
    detail: str


def _time_text(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.isoformat() if moment.tzinfo else moment.replace(tzinfo=UTC).isoformat()


def _event_from(
    body: ConsentIn | UnsubscribeIn, kind: EventKind, token: ApiToken, now: datetime
) -> NewEvent:
    fields = {
        "recipient": body.recipient,
        "occurred_at": _time_text(body.occurred_at or now),
        "kind": kind.value,
        "method": body.method,
        "source": body.source,
        "ip": body.ip,
        "confirmed_at": _time_text(getattr(body, "confirmed_at", None)),
        "evidence": body.evidence,
        "list_id": normalise_list_id(body.list_id),
    }
    try:
        return build_event(fields, account=token.account, recorded_by=f"api:{token.name}", now=now)
    except RecordError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None


# -- the application -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiContext:
    """What the endpoints share, kept on ``app.state`` so the app is built per store."""

    tokens: TokenRing
    store: ConsentStore
    clock: Clock


_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `sendwarden api token create`: an account token records "
    "that account's consent, a staff token reads every record.",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No bearer token, or one that is not configured."},
    403: {"model": ErrorOut, "description": "The token may not do this."},
    422: {"model": ErrorOut, "description": "An invalid record or address."},
    503: {"model": ErrorOut, "description": "The consent database is unavailable; retry."},
}
router = APIRouter(prefix="/v1", responses=_ERRORS)


def context(request: Request) -> ApiContext:
    return typing.cast(ApiContext, request.app.state.sendwarden)


def unauthorized(presented: str | None) -> HTTPException:
    """401 for a request with no bearer token, or one that is not configured."""
    if presented is None:
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "unknown token (not in this server's [[api.tokens]])",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def caller(
    ctx: Annotated[ApiContext, Depends(context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The configured token the request presents; 401 without one."""
    presented = credentials.credentials if credentials is not None else None
    token = ctx.tokens.identify(presented) if presented is not None else None
    if token is None:
        raise unauthorized(presented)
    return token


def account_writer(token: Annotated[ApiToken, Depends(caller)]) -> ApiToken:
    if token.role != "account":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"token {token.name} is a staff token: staff tokens read records, they do not "
            "write them",
        )
    return token


def staff_reader(token: Annotated[ApiToken, Depends(caller)]) -> ApiToken:
    if token.role != "staff":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"token {token.name} belongs to account {token.account}: reading the evidence "
            "needs a staff token",
        )
    return token


def _record(
    ctx: ApiContext, body: ConsentIn | UnsubscribeIn, kind: EventKind, token: ApiToken
) -> RecordedOut:
    if body.account is not None and body.account != token.account:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"token {token.name} writes only the records of account {token.account}, "
            f"not {body.account}",
        )
    event = _event_from(body, kind, token, ctx.clock())
    ctx.store.append([event])
    return RecordedOut(
        account=event.account,
        recipient=event.recipient,
        kind=event.kind.value,
        list_id=event.list_id,
        occurred_at=canonical_time(event.occurred_at),
        recorded_by=event.recorded_by,
    )


@router.post(
    "/consent",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordedOut,
    summary="Record an opt-in",
)
def post_consent(
    body: ConsentIn,
    token: Annotated[ApiToken, Depends(account_writer)],
    ctx: Annotated[ApiContext, Depends(context)],
) -> RecordedOut:
    """The subscriber agreed to receive the account's mail (or one list's, with
    ``list_id``). Appended to the ledger; nothing is ever overwritten."""
    return _record(ctx, body, EventKind.GRANTED, token)


@router.post(
    "/unsubscribe",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordedOut,
    summary="Record an unsubscribe",
)
def post_unsubscribe(
    body: UnsubscribeIn,
    token: Annotated[ApiToken, Depends(account_writer)],
    ctx: Annotated[ApiContext, Depends(context)],
) -> RecordedOut:
    """The subscriber withdrew consent. Without ``list_id`` it covers all of the
    account's mail; bulk mail to the address is refused from now on."""
    return _record(ctx, body, EventKind.REVOKED, token)


@router.get("/consent/{recipient}", summary="The evidence timeline of one address (staff)")
def get_consent(
    recipient: Annotated[str, Path(description="The address, e.g. carol@example.org")],
    token: Annotated[ApiToken, Depends(staff_reader)],
    ctx: Annotated[ApiContext, Depends(context)],
    account: Annotated[str | None, Query(description="Only this account's records")] = None,
) -> dict[str, Any]:
    """Every record for the address, oldest first, grouped by account, with the
    current status per list and a check of these records against the ledger's hash
    chain (``chain.ok``; false means rows were edited or deleted)."""
    try:
        address = normalise_recipient(recipient)
    except RecordError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    history = ctx.store.history(address, account)
    chain = ctx.store.verify_events(stored.seq for stored in history) if history else None
    return render_dict(address, history, chain)


def _store_unavailable(request: Request, error: Exception) -> JSONResponse:
    detail = error.detail if isinstance(error, StoreError) else str(error)
    return JSONResponse(
        {"detail": f"the consent database is unavailable ({detail}); retry later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "30"},
    )


# -- limits before the body is read -------------------------------------------------

#: Largest request body anyone may send: a consent record is a few KB at most.
MAX_BODY_BYTES = 64 * 1024
#: Largest body of a request without a configured bearer token (a sign-in form): a
#: stranger makes the server read no more than this.
ANONYMOUS_BODY_BYTES = 8 * 1024
#: Paths that are answered only with a bearer token: refused before the body is read.
TOKEN_ONLY_PREFIX = "/v1/"


def presented_token(scope: Scope) -> str | None:
    """The bearer token in the request's Authorization header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = typing.cast(bytes, value).decode("latin-1")
            scheme, _, credentials = text.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


class AuthenticateFirst:
    """Checks the bearer token from the headers before anything reads the body, for
    every route of the app (pure ASGI, so it wraps routes added by anyone): a request
    to ``/v1/`` without a configured token is answered 401 at once; any other request
    without one may send at most ANONYMOUS_BODY_BYTES. The app-wide limit
    (``FastAPI(max_body_size=MAX_BODY_BYTES)``) bounds everyone else. Tokens are read
    from ``app.state`` on every request, so a reload takes effect at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = presented_token(scope)
        ctx = typing.cast(ApiContext, scope["app"].state.sendwarden)
        if presented is not None and ctx.tokens.identify(presented) is not None:
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(TOKEN_ONLY_PREFIX):
            error = unauthorized(presented)
            response = JSONResponse(
                {"detail": error.detail}, status_code=error.status_code, headers=error.headers
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _limited(scope, receive, ANONYMOUS_BODY_BYTES), send)


def _limited(scope: Scope, receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses (413) a body announced or grown over ``limit`` bytes.
    (Not Starlette's nested body-limit middleware: each route sets the app-wide limit
    again, which would lift this lower one.)"""
    announced = next(
        (value for name, value in scope.get("headers", ()) if name == b"content-length"), b""
    )
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        if announced.isdigit() and int(announced) > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
        return message

    return receive_limited


def reload_tokens(app: FastAPI, tokens: Iterable[ApiToken]) -> None:
    """Serve with these tokens from the next request on (SIGHUP in ``sendwarden api``)."""
    ctx = typing.cast(ApiContext, app.state.sendwarden)
    app.state.sendwarden = dataclasses.replace(ctx, tokens=TokenRing(tokens))


SWAGGER_STATIC = "/static/swagger"


def _self_hosted_docs(app: FastAPI) -> None:
    """``/docs`` from Swagger UI files served by this app (the Swagger UI 5 bundle that
    the fastapi-offline package ships; swagger-ui-bundle's 4.x cannot read OpenAPI
    3.1), not a CDN: the page works on a network with no internet."""
    from importlib import resources

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = resources.files("fastapi_offline") / "static"
    app.mount(SWAGGER_STATIC, StaticFiles(directory=str(static)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_STATIC}/favicon.png",
        )


def create_app(
    tokens: Iterable[ApiToken],
    store: ConsentStore,
    clock: Clock = lambda: datetime.now(UTC),
    ui: Any = None,
) -> FastAPI:
    """The API over one consent store. The caller owns the store (and closes it).
    ``ui``: a :class:`sendwarden.ui.routes.UiContext` to serve the support page too."""
    app = FastAPI(
        docs_url=None,  # served by _self_hosted_docs, without a CDN
        redoc_url=None,  # ReDoc has no self-hostable bundle here; /docs covers it
        title="sendwarden consent API",
        version=__version__,
        description="Consent records for bulk mail: signup and unsubscribe pages write them, "
        "support staff read the evidence. Bulk mail is only accepted for recipients whose "
        "latest record is an opt-in.",
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.sendwarden = ApiContext(TokenRing(tokens), store, clock)
    app.add_middleware(AuthenticateFirst)
    app.include_router(router)
    app.add_exception_handler(StoreError, _store_unavailable)
    _self_hosted_docs(app)
    if ui is not None:
        from fastapi.staticfiles import StaticFiles

        from sendwarden.ui import routes

        app.state.sendwarden_ui = ui
        app.include_router(routes.router)
        app.mount(
            "/ui/static", StaticFiles(directory=str(routes.UI_FILES / "static")), name="ui-static"
        )
    return app
