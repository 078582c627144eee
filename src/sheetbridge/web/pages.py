"""Server-rendered pages: sign-in and the dashboard."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from sheetbridge.insurance.models import LINES_OF_BUSINESS, POLICY_STATUSES
from sheetbridge.web.deps import PageUser, Runtime, session_key
from sheetbridge.web.security import (
    MAX_PASSWORD,
    HeldOff,
    SignInLimits,
    authenticate,
    checked_wrong,
    count_sign_in,
    csrf_matches,
    end_session,
    forget_wrong_sign_ins,
    held_off,
    new_csrf_token,
    start_session,
    uncount_sign_in,
)

router = APIRouter(include_in_schema=False)
# The sign-in form's fields fit in a few hundred bytes; a body past this is
# no form of these pages and is not read further.
MAX_FORM_BYTES = 16 * 1024
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


@router.get("/favicon.ico")
def favicon() -> Response:
    """The icon, for browsers that ask at the old address (a JSON answer
    opened in a tab, say); the pages link it themselves."""
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str = "") -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "error": error}
    )


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _read_form(request, "username", "password", "csrf")
    if form is None:
        return _login_again(request, "Wrong username or password.")
    username, password, csrf = form
    if not csrf_matches(request.session.get("csrf"), csrf):
        return _login_again(request, "Your sign-in form expired; please try again.")
    # No user has a longer name or password: refused without hashing it.
    if not 1 <= len(username) <= 64 or len(password) > MAX_PASSWORD:
        return _login_again(request, "Wrong username or password.")
    address = request.client.host if request.client else "unknown"
    token = await run_in_threadpool(
        _sign_in, request.app.state.runtime, username, password, address
    )
    if isinstance(token, HeldOff):
        return _login_again(
            request,
            token.message(),
            status_code=429,
            headers={"Retry-After": str(token.seconds)},
        )
    if token is None:
        return _login_again(request, "Wrong username or password.")
    request.session.clear()
    request.session["sid"] = token
    request.session["csrf"] = new_csrf_token()
    return RedirectResponse("/", status_code=303)


async def _read_form(request: Request, *names: str) -> tuple[str, ...] | None:
    """The text of the named fields of a page's form ("" for one missing), or
    None for a body that no such form sends (no multipart boundary, past
    MAX_FORM_BYTES, a thousand fields).

    Forms are read here, not by FastAPI, so that such a body gets the page's
    own answer, not an error in JSON.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    capped = Request(request.scope, _capped(request.receive, MAX_FORM_BYTES))
    try:
        form = await capped.form(max_files=0, max_fields=10)
    except (HTTPException, _FormTooLarge):
        return None
    return tuple(
        value if isinstance(value := form.get(name), str) else "" for name in names
    )


class _FormTooLarge(Exception):
    pass


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive``, giving up once the body passes ``limit`` bytes."""
    taken = 0

    async def receive_capped() -> Message:
        nonlocal taken
        message = await receive()
        taken += len(message.get("body", b""))
        if taken > limit:
            raise _FormTooLarge
        return message

    return receive_capped


def _sign_in(
    rt: Runtime, username: str, password: str, address: str
) -> str | HeldOff | None:
    """The new sign-in's token; None for a wrong username or password, or
    how long tries wait after too many of those (the password unchecked)."""
    # No user's name holds a NUL, which PostgreSQL cannot store: the try is
    # counted, and refused, under a name that no user has either.
    username = username.replace("\x00", "\ufffd")
    settings = rt.settings
    limits = SignInLimits(
        settings.sign_in_tries,
        settings.sign_in_tries_per_address,
        settings.sign_in_window_s,
    )
    with rt.db.session() as session:
        attempt = count_sign_in(session, username, address, limits)
    with rt.db.read_session() as session:
        waiting = held_off(session, username, address, limits, besides=attempt)
        user = None if waiting else authenticate(session, username, password)
    if waiting is not None:
        with rt.db.session() as session:
            uncount_sign_in(session, attempt)
        return waiting
    if user is None:
        with rt.db.session() as session:
            checked_wrong(session, attempt)
        return None
    with rt.db.session() as session:
        forget_wrong_sign_ins(session, username, address)
        return start_session(session, user, settings.session_max_age_s)


def _end_session(rt: Runtime, token: str) -> None:
    with rt.db.session() as session:
        end_session(session, token)
    rt.users.forget(session_key(token))


def _login_again(
    request: Request,
    error: str,
    *,
    status_code: int = 400,
    headers: dict[str, str] | None = None,
) -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"csrf": csrf_token(request), "error": error},
        status_code=status_code,
        headers=headers,
    )


@router.post("/logout")
async def logout(request: Request) -> Response:
    # A body the sign-out form never sends is a sign-out without its token.
    form = await _read_form(request, "csrf")
    if form is not None and csrf_matches(request.session.get("csrf"), form[0]):
        signed_in = request.session.get("sid")
        if isinstance(signed_in, str):
            await run_in_threadpool(_end_session, request.app.state.runtime, signed_in)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)
    # Refused: back to the page (with a fresh token), which says the user is
    # still signed in (or, without a session, sends them to sign in).
    return RedirectResponse("/?sign_out=refused", status_code=303)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: PageUser) -> Response:
    return templates.TemplateResponse(
        request,
        "dashboard.html",
        {
            "user": user,
            "csrf": csrf_token(request),
            "sign_out_refused": request.query_params.get("sign_out") == "refused",
            "statuses": POLICY_STATUSES,
            "lines": LINES_OF_BUSINESS,
        },
    )
