"""Sync targets changed at the same moment: a user's first syncs share one
target, and two books never both take one spreadsheet."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from sheetbridge.config import Settings
from sheetbridge.db import Database
from sheetbridge.insurance import sync_jobs
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.models import User
from sheetbridge.insurance.services import InvalidField
from sheetbridge.sync.models import SyncTarget
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import add_user, hash_password
from tests.conftest import truncate_all

SHEET = "1AbCdEfGhIjKlMnOpQrStUvWxYz"


def test_concurrent_first_syncs_of_a_new_user_create_one_target(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as session:
        add_user(session, "newcomer", "a long enough password", role="agent")
    with runtime.db.read_session() as session:
        user = session.scalars(select(User).where(User.username == "newcomer")).one()
    start = threading.Barrier(8)
    targets: list[int] = []
    errors: list[BaseException] = []

    def first_sync() -> None:
        start.wait(10)
        try:
            targets.append(runtime.sync.enqueue(user, "to_sheet").job_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_sync) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(targets) == 8
    with runtime.db.read_session() as session:
        stored = session.scalars(
            select(SyncTarget).where(SyncTarget.user_id == user.id)
        ).all()
    assert len(stored) == 1


@pytest.fixture(params=["default", "postgresql"])
def any_runtime(
    request: pytest.FixtureRequest, settings: Settings
) -> Iterator[Runtime]:
    """The app's parts on the suite's database, and on PostgreSQL; a server
    that may sync with Google (the emulator's token), though none is called."""
    if request.param == "default":
        runtime: Runtime = request.getfixturevalue("runtime")
        runtime.settings.google_static_token = "emulator"
        yield runtime
        return
    pg_url: str = request.getfixturevalue("pg_url")
    database = Database(pg_url)
    truncate_all(database)
    database.dispose()
    runtime = build_runtime(
        settings.model_copy(
            update={"database_url": pg_url, "google_static_token": "emulator"}
        )
    )
    with runtime.db.session() as session:
        seed_demo(session, customers=2, policies=2, password_hasher=hash_password)
    yield runtime
    runtime.db.dispose()


def user_named(runtime: Runtime, username: str) -> User:
    with runtime.db.read_session() as session:
        return session.scalars(select(User).where(User.username == username)).one()


def google_targets(runtime: Runtime, spreadsheet_id: str) -> list[int]:
    with runtime.db.read_session() as session:
        return list(
            session.scalars(
                select(SyncTarget.user_id).where(
                    SyncTarget.backend == "google",
                    SyncTarget.location == spreadsheet_id,
                )
            )
        )


def test_two_books_pointed_at_one_spreadsheet_at_once_get_it_once_and_one_422(
    any_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = any_runtime
    users = [user_named(runtime, name) for name in ("alice", "bob")]
    for user in users:
        runtime.sync.target_for(user)
    # Both changes look for another book on the spreadsheet before either
    # stores its own, where the database lets them (PostgreSQL); on SQLite
    # the second waits for the first's write turn and looks after it.
    refuse_shared = sync_jobs._refuse_shared
    checked = threading.Condition()
    looked: list[int] = []

    def look_then_wait(*args: Any) -> None:
        refuse_shared(*args)
        with checked:
            looked.append(1)
            checked.notify_all()
            checked.wait_for(lambda: len(looked) == 2, timeout=2)

    monkeypatch.setattr(sync_jobs, "_refuse_shared", look_then_wait)
    taken: list[int] = []
    refused: list[InvalidField] = []
    errors: list[BaseException] = []

    def point(user: User) -> None:
        try:
            runtime.sync.update_target(user, backend="google", spreadsheet_id=SHEET)
            taken.append(user.id)
        except InvalidField as exc:
            refused.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=point, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(taken) == 1
    (refusal,) = refused
    assert refusal.field == "spreadsheet_id"
    assert "already the sheet of another user's book" in refusal.message
    assert google_targets(runtime, SHEET) == taken


def test_a_change_whose_look_missed_the_other_book_is_the_same_422(
    any_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = any_runtime
    alice, bob, admin = (
        user_named(runtime, name) for name in ("alice", "bob", "admin")
    )
    runtime.sync.update_target(bob, backend="google", spreadsheet_id=SHEET)
    # As if bob's change committed between each look of alice's and her write.
    refuse_shared = sync_jobs._refuse_shared
    looks: list[int] = []

    def miss_each_first_look(*args: Any) -> None:
        looks.append(1)
        if len(looks) % 2 == 0:
            refuse_shared(*args)

    monkeypatch.setattr(sync_jobs, "_refuse_shared", miss_each_first_look)

    with pytest.raises(InvalidField) as as_agent:
        runtime.sync.update_target(alice, backend="google", spreadsheet_id=SHEET)
    with pytest.raises(InvalidField) as as_admin:
        runtime.sync.update_target(
            alice, backend="google", spreadsheet_id=SHEET, by=admin
        )

    assert as_agent.value.field == as_admin.value.field == "spreadsheet_id"
    assert "already the sheet of another user's book" in as_agent.value.message
    assert "already the sheet of bob's book" in as_admin.value.message
    assert google_targets(runtime, SHEET) == [bob.id]
    assert runtime.sync.target_for(alice).backend == "xlsx"
