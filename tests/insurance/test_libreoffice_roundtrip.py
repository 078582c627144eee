"""A workbook the app wrote, opened and saved by LibreOffice Calc, syncs clean."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sheetbridge.config import Settings
from sheetbridge.insurance.demo import seed_demo
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.web.app import build_runtime
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import hash_password
from tests.insurance.test_workbook_sync import run_sync, workbook_path
from tests.support.libreoffice import find_soffice, resave_xlsx

pytestmark = pytest.mark.libreoffice


@pytest.fixture(autouse=True)
def _need_libreoffice() -> None:
    if find_soffice() is None:
        message = (
            "LibreOffice (soffice) is not installed: "
            "apt-get install libreoffice-calc-nogui"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The full demo agency, so every kind of demo value makes the round trip."""
    runtime = build_runtime(settings)
    with runtime.db.session() as session:
        seed_demo(session, password_hasher=hash_password)
    yield runtime
    runtime.db.dispose()


def test_workbook_saved_by_calc_imports_nothing_and_needs_no_writes(
    runtime: Runtime,
) -> None:
    run_sync(runtime, "admin", TO_SHEET)
    resave_xlsx(workbook_path(runtime, "admin"))

    imported = run_sync(runtime, "admin", FROM_SHEET)
    pushed = run_sync(runtime, "admin", TO_SHEET)

    assert imported["summary"]["updated"] == 0
    assert imported["summary"]["created"] == 0
    assert imported["summary"]["issues"] == 0, imported["tabs"]
    assert pushed["summary"]["written_cells"] == 0
    assert pushed["summary"]["appended"] == 0
    assert pushed["summary"]["issues"] == 0, pushed["tabs"]
