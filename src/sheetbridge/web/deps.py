"""Request dependencies: the runtime, database sessions and the signed-in user."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import SyncService
from sheetbridge.queue.store import JobQueue
from sheetbridge.web.security import csrf_matches, user_for_token

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Runtime:
    """Everything the web layer shares between requests."""

    settings: Settings
    db: Database
    queue: JobQueue
    sync: SyncService


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


def reader(request: Request) -> Iterator[Session]:
    with runtime(request).db.read_session() as session:
        yield session


class NotSignedIn(Exception):
    """Raised for page requests without a session; answered with a redirect."""


def _user(request: Request, session: Session) -> User:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        user = user_for_token(session, header[7:].strip())
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API token")
        return user
    user_id = request.session.get("uid")
    user = session.get(User, user_id) if isinstance(user_id, int) else None
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in first")
    if request.method not in SAFE_METHODS and not csrf_matches(
        request.session.get("csrf"), request.headers.get("x-csrf-token")
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return user


def current_user(request: Request) -> User:
    """The signed-in user; the session used to find them is closed at once, so
    a request never holds two database connections."""
    with runtime(request).db.read_session() as session:
        return _user(request, session)


def page_user(request: Request) -> User:
    try:
        return current_user(request)
    except HTTPException as exc:
        raise NotSignedIn from exc


Reader = Annotated[Session, Depends(reader)]
CurrentUser = Annotated[User, Depends(current_user)]
PageUser = Annotated[User, Depends(page_user)]
RuntimeDep = Annotated[Runtime, Depends(runtime)]
