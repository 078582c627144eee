"""A user name becomes a workbook's file name: it must stay one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sheetbridge.insurance.models import User, is_device_name
from sheetbridge.web import security
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import UserError, add_user


def refusal(runtime: Runtime, name: str) -> str:
    """Why adding an agent of this name is refused."""
    with runtime.db.session() as session, pytest.raises(UserError) as refused:
        add_user(session, name, "long-enough-1", role="agent")
    return str(refused.value)


@pytest.mark.parametrize(
    "name", ["", "../../outside", "x/../alice", ".hidden", "a b", "back\\slash", "é"]
)
def test_a_user_name_that_is_not_a_plain_file_name_is_refused(
    runtime: Runtime, name: str
) -> None:
    assert "letters, digits" in refusal(runtime, name)


def test_plain_names_with_dots_dashes_and_underscores_are_accepted(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as session:
        for name in ("kim.lee", "kim_lee-2", "K9"):
            add_user(session, name, "long-enough-1", role="agent")


def test_a_stored_name_unfit_for_a_file_gets_a_workbook_inside_the_folder(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as session:
        # As a name stored before names were checked would be.
        session.add(User(username="x/../alice", password_hash="-", role="agent"))
    with runtime.db.read_session() as session:
        user = session.query(User).filter_by(username="x/../alice").one()

    location = Path(runtime.sync.target_for(user).location)

    folder = runtime.settings.workbook_dir.resolve()
    assert location.parent == folder
    assert location.name == f"user-{user.id}.xlsx"


def test_a_name_differing_only_in_case_from_a_user_is_refused(
    runtime: Runtime,
) -> None:
    # Two such workbooks would be one file on a case-insensitive disk.
    assert "already exists" in refusal(runtime, "ALICE")


@pytest.mark.parametrize(
    "name", ["con", "NUL", "com1", "lpt9.x", "aux", "com0", "LPT0", "lpt0.xlsx"]
)
def test_names_windows_keeps_for_devices_are_refused(
    runtime: Runtime, name: str
) -> None:
    assert "reserved" in refusal(runtime, name)


@pytest.mark.parametrize(
    "name", ["COM0", "lpt0", "com\u00b9", "LPT\u00b2", "com\u00b3.txt", "conin$"]
)
def test_windows_device_names_include_port_0_and_superscript_digits(
    name: str,
) -> None:
    assert is_device_name(name)


@pytest.mark.parametrize("name", ["com10", "lpt", "console", "com\u2074"])
def test_names_that_only_look_like_devices_are_not_devices(name: str) -> None:
    assert not is_device_name(name)


def test_a_stored_device_name_gets_a_workbook_named_by_the_user_id(
    runtime: Runtime,
) -> None:
    with runtime.db.session() as session:
        # As a name stored before port 0 was known to be a device.
        session.add(User(username="lpt0", password_hash="-", role="agent"))
    with runtime.db.read_session() as session:
        user = session.query(User).filter_by(username="lpt0").one()

    location = Path(runtime.sync.target_for(user).location)

    assert location.name == f"user-{user.id}.xlsx"


def test_names_differing_only_in_case_added_at_once_make_one_user(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each adding checks the name, then saves: a moment between the two lets
    # every one of them find the name free, unless they take turns.
    hashed = security.hash_password

    def slow_hash(password: str) -> str:
        time.sleep(0.3)
        return hashed(password)

    monkeypatch.setattr(security, "hash_password", slow_hash)

    def add(name: str) -> str:
        try:
            with runtime.db.session() as session:
                add_user(session, name, "long-enough-1", role="agent")
        except UserError:
            return "refused"
        return "added"

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(add, ["Zed", "zed", "ZED"]))

    assert sorted(outcomes) == ["added", "refused", "refused"]
