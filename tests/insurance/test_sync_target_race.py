"""A user's first syncs, sent together, share one sync target."""

from __future__ import annotations

import threading

from sqlalchemy import select

from sheetbridge.insurance.models import User
from sheetbridge.sync.models import SyncTarget
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import add_user


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
