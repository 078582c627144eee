"""Have LibreOffice Calc (headless) open and save workbooks the app wrote.

Two entry points:

* :func:`resave_xlsx` - open an xlsx and save it again as xlsx, in place, the
  way a person pressing "Save" (Keep format) would. Uses
  ``soffice --headless --convert-to xlsx`` with a private profile per call.
* :func:`edit_with_calc` - open an xlsx through UNO, enter text into cells
  (``setFormula``, or the keyboard path ``.uno:EnterString``), insert/delete
  rows, and save as xlsx.
  Runs ``calc_edit.py`` with the system ``/usr/bin/python3`` (which has the
  ``uno`` module); the script starts and stops its own private soffice.

Observed with LibreOffice 7.4.7 (Debian 12) on a workbook written by
openpyxl and read back with openpyxl (``load_workbook`` default mode):

* Text stays text: ``"00123"``, ``"04001"``, ``"+1 555-0142"``,
  ``"2024-01-05"``, ``"1e5"``, non-ASCII, leading/trailing spaces and
  embedded newlines all come back as the identical ``str`` (data_type "s").
* A cell holding the literal string ``"=1+1"`` (data_type "s") stays a
  string, not a formula (also with ``data_only=True``).
* Dates come back as ``datetime`` at midnight (as openpyxl already returns
  them before the round trip); datetimes keep their time; ``time`` values
  stay ``time``. Number formats are rewritten with escapes, e.g.
  ``yyyy-mm-dd`` becomes ``yyyy\\-mm\\-dd`` (still detected as a date).
* Numbers: ints and floats come back equal (``1234.56``, ``0.1``,
  ``-0.005``, ``1e-07``, ``12345678.91``); values beyond 15 significant
  digits are rounded to 15 digits (``1.234567890123457e19`` ->
  ``1.23456789012346e19``).
* Booleans come back as the formula ``"=TRUE()"`` / ``"=FALSE()"``
  (data_type "f"); with ``data_only=True`` they read as ``True``/``False``.
* Formulas written by openpyxl (no cached value) stay formulas and gain a
  cached value (``data_only=True`` reads ``3`` for ``=SUM(1,2)``).
* An empty-string cell disappears (reads as ``None``).
* Kept: sheet order/names, ``hidden`` sheets, defined names, custom document
  properties, comments, data validations, sheet protection, unlocked cells,
  hidden columns, tables.
* Changed: ``veryHidden`` sheets become plain ``hidden``; freeze panes are
  dropped (headless save); ``quotePrefix`` on a cell is dropped.

Through :func:`edit_with_calc` (Calc's en-US input recognition):

* ``op="set"`` (``XCell.setFormula``) parses the text like typing but does
  NOT apply automatic number formats: ``00123`` -> number ``123``,
  ``04001`` -> ``4001``, ``=1+1`` -> formula (cached ``2``), ``'00123`` ->
  text ``"00123"`` (cell format becomes ``@``), ``2024-03-01`` and
  ``03/01/2024`` -> the bare serial ``45352`` in a General cell (openpyxl
  reads an ``int``, not a date!), ``true`` -> ``1``, ``$1,234.50`` ->
  ``1234.5``, ``12%`` -> ``0.12``; ``+1 555-0142`` and ``(207) 555-0199``
  stay text.
* ``op="type"`` (dispatches ``.uno:EnterString``, the keyboard path) gives
  the same values but with the formats Calc would set: ``2024-03-01`` ->
  ``datetime(2024, 3, 1)`` (format ``yyyy\\-mm\\-dd``), ``03/01/2024`` and
  ``1/2`` -> dates (``mm/dd/yy``; ``1/2`` is January 2 of the current
  year), ``true`` -> ``True``, ``$1,234.50`` -> ``1234.5`` with a currency
  format, ``12%`` -> ``0.12`` with ``0.00%``.
* In a cell whose number format is Text (``@``), typing keeps everything as
  text: ``00123``, ``04001``, ``=1+1`` and ``2024-03-01`` all stay strings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.server import free_port

XLSX_FILTER = "Calc MS Excel 2007 XML"
CALC_EDIT_SCRIPT = Path(__file__).with_name("calc_edit.py")
SYSTEM_PYTHON = "/usr/bin/python3"


class LibreOfficeError(RuntimeError):
    """LibreOffice failed to open, edit or save a workbook."""


def find_soffice() -> str | None:
    """The path of the ``soffice`` binary, or ``None`` if LibreOffice is absent."""
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            return found
    for candidate in (
        "/usr/bin/soffice",
        "/usr/lib/libreoffice/program/soffice",
        "/opt/libreoffice/program/soffice",
    ):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def has_uno() -> bool:
    """Whether :func:`edit_with_calc` can run (soffice plus system python-uno)."""
    if find_soffice() is None or not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import uno"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def soffice_env(profile_dir: Path) -> dict[str, str]:
    """Environment for a headless soffice: no display, private HOME/TMP."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["HOME"] = str(profile_dir)
    env["TMPDIR"] = str(profile_dir)
    env["SAL_USE_VCLPLUGIN"] = "svp"
    return env


def _soffice_or_raise() -> str:
    soffice = find_soffice()
    if soffice is None:
        raise LibreOfficeError("LibreOffice (soffice) is not installed")
    return soffice


def _run(
    argv: list[str], *, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process group; kill the whole group on timeout."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGTERM first so calc_edit.py can stop the soffice it started.
        _kill_group(process, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = process.communicate()
        raise LibreOfficeError(
            f"timed out after {timeout_s}s: {argv!r}\n{stdout}\n{stderr}"
        ) from None
    finally:
        # soffice may leave helper processes behind in its group.
        _kill_group(process)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def resave_xlsx(path: Path, timeout_s: float = 120) -> None:
    """Open ``path`` in LibreOffice Calc and save it again as xlsx, in place.

    Equivalent to a person opening the workbook in Calc and saving it in
    Excel 2007-365 format. See the module docstring for what changes.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    soffice = _soffice_or_raise()
    with tempfile.TemporaryDirectory(prefix="sb-lo-") as tmp:
        work = Path(tmp)
        profile = work / "profile"
        outdir = work / "out"
        profile.mkdir()
        outdir.mkdir()
        argv = [
            soffice,
            f"-env:UserInstallation={profile.as_uri()}",
            "--headless",
            "--invisible",
            "--norestore",
            "--nologo",
            "--nodefault",
            "--nolockcheck",
            "--convert-to",
            f"xlsx:{XLSX_FILTER}",
            "--outdir",
            str(outdir),
            str(path),
        ]
        result = _run(argv, env=soffice_env(profile), timeout_s=timeout_s)
        produced = outdir / (path.stem + ".xlsx")
        if result.returncode != 0 or not produced.is_file():
            raise LibreOfficeError(
                f"soffice failed to resave {path} (exit {result.returncode})\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        shutil.move(str(produced), str(path))


def edit_with_calc(
    path: Path, edits: list[dict[str, Any]], timeout_s: float = 180
) -> None:
    """Edit the workbook at ``path`` in LibreOffice Calc via UNO and save in place.

    ``edits`` are applied in order; each is one of::

        {"op": "set", "sheet": "Customers", "cell": "B2", "value": "text"}
        {"op": "delete_row", "sheet": "Customers", "row": 5}
        {"op": "insert_row", "sheet": "Customers", "row": 5}
        {"op": "type", "sheet": "Customers", "cell": "C2", "value": "3/1/2024"}

    ``op`` defaults to ``"set"``: ``value`` is entered with ``setFormula``, which
    parses it as typing would (``=1+1`` becomes a formula, ``00123`` the
    number 123, ``'00123`` stays text, an empty string clears the cell) but
    sets no automatic number format (a typed date becomes a bare serial
    number). ``"type"`` goes through Calc's keyboard-input path instead and
    also applies the date/currency/percent/boolean formats a person would
    get. See the module docstring for exact results.

    Rows are 1-based as shown in Calc; ``insert_row`` puts a blank row before
    ``row`` (``count`` rows if given, default 1), and ``delete_row`` removes
    ``row`` (``count`` rows if given).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    soffice = _soffice_or_raise()
    with tempfile.TemporaryDirectory(prefix="sb-calc-edit-") as tmp:
        work = Path(tmp)
        edits_file = work / "edits.json"
        edits_file.write_text(json.dumps(edits), encoding="utf-8")
        out = work / ("edited-" + path.name)
        env = dict(os.environ)
        env["SHEETBRIDGE_SOFFICE"] = soffice
        env["SHEETBRIDGE_SOFFICE_PORT"] = str(free_port())
        # The system python must not pick up the venv's site-packages.
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        argv = [
            SYSTEM_PYTHON,
            str(CALC_EDIT_SCRIPT),
            str(path),
            str(out),
            str(edits_file),
        ]
        result = _run(argv, env=env, timeout_s=timeout_s)
        if result.returncode != 0 or not out.is_file():
            raise LibreOfficeError(
                f"calc_edit.py failed on {path} (exit {result.returncode})\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        shutil.move(str(out), str(path))
