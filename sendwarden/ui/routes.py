"""The pages under ``/ui``: sign in, a recipient's consent timeline, an account's
usage, refusals and suspension (suspend and lift with a reason).

Who is signed in, two ways (``docs/support.md``):

- a **staff token** (``[[api.tokens]]`` with ``role = "staff"``) typed into the sign-in
  form: the session is a random id in an HttpOnly, SameSite=Strict cookie, kept in
  memory (a restart signs everyone out); the staff member's name is the token's name;
- a **trusted reverse proxy** that authenticated the person (SSO) and passes their
  name in ``ui.trusted_header``: believed only from ``ui.trusted_proxies``.

Every form that changes something carries a token derived from the session (HMAC), so
another site cannot post it in a signed-in browser's name.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
import typing
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from sendwarden.alerts.risk import RiskStore, describe_refusals
from sendwarden.config import Settings
from sendwarden.consent.model import ConsentStore
from sendwarden.consent.records import RecordError, normalise_recipient
from sendwarden.consent.timeline import render_dict
from sendwarden.monitoring import MonitorStore
from sendwarden.ratelimit.counter import RecipientCounter
from sendwarden.store import StoreError
from sendwarden.ui.history import SuspensionDesk

COOKIE = "sw_session"
UI_FILES = resources.files("sendwarden.ui")
templates = Jinja2Templates(directory=str(UI_FILES / "templates"))
router = APIRouter(prefix="/ui", include_in_schema=False)


@dataclass(frozen=True)
class Staff:
    name: str
    session: str  # the session id, or "header:NAME" for proxy sign-in

    @property
    def via_header(self) -> bool:
        return self.session.startswith("header:")


@dataclass
class Sessions:
    """Signed-in browsers: session id -> (staff name, expiry)."""

    lifetime: float
    _sessions: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, name: str) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[session] = (name, now + self.lifetime)
        return session

    def name(self, session: str) -> str | None:
        with self._lock:
            entry = self._sessions.get(session)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def close(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)


@dataclass
class UiContext:
    """What the pages need; kept on ``app.state.sendwarden_ui``."""

    settings: Settings
    consent: ConsentStore
    counter: RecipientCounter
    risks: RiskStore
    monitor: MonitorStore
    desk: SuspensionDesk
    identify: typing.Callable[[str], Any]  # TokenRing.identify
    sessions: Sessions
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def staff(self, request: Request) -> Staff | None:
        ui = self.settings.ui
        if ui.trusted_header and request.client is not None:
            name = request.headers.get(ui.trusted_header, "").strip()
            if name and _from_trusted_proxy(request.client.host, ui.trusted_proxies):
                return Staff(name, f"header:{name}")
        session = request.cookies.get(COOKIE, "")
        signed_in = self.sessions.name(session) if session else None
        return Staff(signed_in, session) if signed_in else None

    def csrf(self, staff: Staff) -> str:
        return hmac.new(self.secret, staff.session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, staff: Staff, presented: str) -> bool:
        return hmac.compare_digest(self.csrf(staff), presented)


def _from_trusted_proxy(host: str, networks: tuple[Any, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def ui(request: Request) -> UiContext:
    return typing.cast(UiContext, request.app.state.sendwarden_ui)


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    ctx = ui(request)
    staff = context.pop("staff", None) or ctx.staff(request)
    context.update(staff=staff, csrf=ctx.csrf(staff) if staff else "")
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return response


def to_sign_in() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303)


# -- signing in -----------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if ui(request).staff(request) is not None:
        return RedirectResponse("/ui/", status_code=303)
    return page(request, "login.html", error="")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
    ctx = ui(request)
    found = ctx.identify(token.strip()) if token.strip() else None
    if found is None or found.role != "staff":
        error = "That is not a staff token of this server." if token else "Enter your token."
        # 200, not 401: the form is shown again (a browser logs a 401 page as an error).
        return page(request, "login.html", error=error, staff=None)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        COOKIE, ctx.sessions.open(found.name), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/ui",
        max_age=int(ctx.sessions.lifetime),
    )  # fmt: skip
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    ctx = ui(request)
    staff = ctx.staff(request)
    if staff is not None and ctx.csrf_ok(staff, csrf) and not staff.via_header:
        ctx.sessions.close(staff.session)
    response = to_sign_in()
    response.delete_cookie(COOKIE, path="/ui")
    return response


# -- pages ------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    ctx = ui(request)
    if ctx.staff(request) is None:
        return to_sign_in()
    accounts = [account.id for account in ctx.settings.accounts]
    return page(request, "home.html", accounts=accounts)


@router.get("/recipient", response_class=HTMLResponse)
def recipient(request: Request, address: str = "") -> Response:
    ctx = ui(request)
    if ctx.staff(request) is None:
        return to_sign_in()
    try:
        normalised = normalise_recipient(address)
    except RecordError as error:
        return page(request, "recipient.html", status=422, address=address, error=str(error),
                    timeline=None)  # fmt: skip
    try:
        history = ctx.consent.history(normalised)
        chain = ctx.consent.verify_events(s.seq for s in history) if history else None
    except StoreError as error:
        return unavailable(request, error)
    return page(request, "recipient.html", address=normalised, error="",
                timeline=render_dict(normalised, history, chain))  # fmt: skip


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, id: str = "", notice: str = "") -> Response:
    ctx = ui(request)
    if ctx.staff(request) is None:
        return to_sign_in()
    known = {a.id: a for a in ctx.settings.accounts}
    if id not in known:
        return page(request, "home.html", status=404, accounts=sorted(known),
                    error=f"No account {id!r} in this configuration.")  # fmt: skip
    try:
        usage = ctx.counter.usage(id)
        refusals = ctx.risks.refusals([id]).get(id, {})
        monitored = [c for c in ctx.monitor.summary(24) if c.account == id]
        suspension = ctx.desk.current(id)
        history = ctx.desk.history(id)
    except StoreError as error:
        return unavailable(request, error)
    limit = ctx.settings.recipients_per_hour(known[id])
    return page(
        request, "account.html", account=known[id], used=usage.used, limit=limit,
        percent=min(100, round(100 * usage.used / limit)) if limit else 0,
        refusals=[describe_refusals(rule, n) for rule, n in
                  sorted(refusals.items(), key=lambda item: -item[1])],
        monitored=monitored, suspension=suspension, history=history, notice=notice,
        monitor_only=known[id].monitor_only,
    )  # fmt: skip


@router.post("/account/suspend")
def suspend(
    request: Request,
    id: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    return _change(request, id, reason, csrf, "suspend")


@router.post("/account/lift")
def lift(
    request: Request,
    id: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    return _change(request, id, reason, csrf, "lift")


def _change(request: Request, account_id: str, reason: str, csrf: str, action: str) -> Response:
    ctx = ui(request)
    staff = ctx.staff(request)
    if staff is None:
        return to_sign_in()
    if not ctx.csrf_ok(staff, csrf):
        return page(request, "home.html", status=403, accounts=[],
                    error="The form expired; open the account again.")  # fmt: skip
    if account_id not in {a.id for a in ctx.settings.accounts}:
        return page(request, "home.html", status=404, accounts=[],
                    error=f"No account {account_id!r} in this configuration.")  # fmt: skip
    reason = " ".join(reason.split())[:500]
    if len(reason) < 3:
        return back_to(account_id, "Give a reason (it is recorded).")
    try:
        if action == "suspend":
            ctx.desk.suspend(account_id, reason, staff.name)
            notice = "Suspended."
        else:
            notice = "Lifted." if ctx.desk.lift(account_id, reason, staff.name) else (
                "It was not suspended."
            )  # fmt: skip
    except StoreError as error:
        return unavailable(request, error)
    return back_to(account_id, notice)


def back_to(account_id: str, notice: str) -> RedirectResponse:
    query = urllib.parse.urlencode({"id": account_id, "notice": notice})
    return RedirectResponse(f"/ui/account?{query}", status_code=303)


def unavailable(request: Request, error: StoreError) -> HTMLResponse:
    problem = f"{error.backend} is unavailable ({error.detail}); try again shortly."
    return page(request, "home.html", status=503, accounts=[], error=problem)
