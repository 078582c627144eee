"""Request dependencies: the runtime, database sessions and the signed-in user."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import SyncService
from sheetbridge.queue.store import JobQueue
from sheetbridge.web.security import (
    csrf_matches,
    token_digest,
    user_for_session,
    user_for_token,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignedInUsers:
    """Who an API token or a session belongs to, remembered for a few seconds.

    Every request proves who is calling, and looking that up costs more than a
    status poll itself. A user's new role, or their removal, takes effect
    within ``ttl_s``, as does a sign-out in another process (in this one, at
    once). Only hits are kept: a wrong token is looked up each time.
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._users: dict[str, tuple[User, float]] = {}

    def get(self, key: str) -> User | None:
        found = self._users.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def forget(self, key: str) -> None:
        self._users.pop(key, None)

    def put(self, key: str, user: User) -> None:
        if len(self._users) >= self.max_entries:
            self._users.clear()
        self._users[key] = (user, time.monotonic() + self.ttl_s)


@dataclass
class Runtime:
    """Everything the web layer shares between requests."""

    settings: Settings
    db: Database
    queue: JobQueue
    sync: SyncService
    users: SignedInUsers = field(default_factory=SignedInUsers)


def _runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


async def runtime(request: Request) -> Runtime:
    # async: a plain function would cost every request a trip to the threadpool
    return _runtime(request)


class NotSignedIn(Exception):
    """Raised for page requests without a session; answered with a redirect."""


async def current_user(request: Request) -> User:
    """The caller, by API token or by session cookie (with its CSRF token).

    async: a remembered caller is known without a trip to the threadpool,
    which under load costs a request more than the look-up itself.
    """
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
        user = await _known_user(
            request,
            f"token:{token_digest(token)}",
            lambda session: user_for_token(session, token),
        )
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API token")
        return user
    signed_in = request.session.get("sid")
    user = None
    if isinstance(signed_in, str):
        max_age_s = _runtime(request).settings.session_max_age_s
        user = await _known_user(
            request,
            session_key(signed_in),
            lambda session: user_for_session(session, signed_in, max_age_s),
        )
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in first")
    if request.method not in SAFE_METHODS and not csrf_matches(
        request.session.get("csrf"), request.headers.get("x-csrf-token")
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return user


def session_key(token: str) -> str:
    """Where a browser's sign-in is remembered (see SignedInUsers)."""
    return f"session:{token_digest(token)}"


async def _known_user(
    request: Request, key: str, look_up: Callable[[Session], User | None]
) -> User | None:
    rt = _runtime(request)
    user = rt.users.get(key)
    if user is None:
        user = await run_in_threadpool(_look_up, rt.db, look_up)
        if user is not None:
            rt.users.put(key, user)
    return user


def _look_up(db: Database, look_up: Callable[[Session], User | None]) -> User | None:
    # The session is closed at once, so a request never holds two connections.
    with db.read_session() as session:
        return look_up(session)


async def page_user(request: Request) -> User:
    try:
        return await current_user(request)
    except HTTPException as exc:
        raise NotSignedIn from exc


CurrentUser = Annotated[User, Depends(current_user)]
PageUser = Annotated[User, Depends(page_user)]
RuntimeDep = Annotated[Runtime, Depends(runtime)]
