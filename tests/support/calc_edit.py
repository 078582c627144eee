"""Edit an xlsx in LibreOffice Calc through UNO, as a person typing would.

Run with the system Python, which has the ``uno`` module::

    /usr/bin/python3 calc_edit.py IN.xlsx OUT.xlsx EDITS.json

``EDITS.json`` holds a list of edits applied in order::

    [{"op": "set", "sheet": "Customers", "cell": "B2", "value": "text"},
     {"op": "delete_row", "sheet": "Customers", "row": 5},
     {"op": "insert_row", "sheet": "Customers", "row": 5, "count": 1},
     {"op": "type", "sheet": "Customers", "cell": "C2", "value": "3/1/2024"}]

``op`` defaults to ``"set"``: ``value`` goes through ``XCell.setFormula`` (Calc
parses it like typed input, but sets no automatic number format). ``"type"``
dispatches ``.uno:EnterString`` on the selected cell, the keyboard-input path,
which also applies automatic date/currency/percent/boolean formats. Rows are
1-based; ``insert_row`` inserts blank rows before ``row``.

The script starts its own headless soffice listening on a free localhost
port (``SHEETBRIDGE_SOFFICE_PORT`` if set) with a private throw-away profile,
and stops it before exiting. Set ``SHEETBRIDGE_SOFFICE`` to choose the soffice
binary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uno  # type: ignore[import-not-found]
from com.sun.star.connection import (  # type: ignore[import-not-found]
    NoConnectException,
)

XLSX_FILTER = "Calc MS Excel 2007 XML"
CONNECT_TIMEOUT_S = 60.0


def _prop(name: str, value: Any) -> Any:
    prop = uno.createUnoStruct("com.sun.star.beans.PropertyValue")
    prop.Name = name
    prop.Value = value
    return prop


def _free_port() -> int:
    # The port the caller picked (in SHEETBRIDGE_TEST_PORTS), else any free one.
    chosen = os.environ.get("SHEETBRIDGE_SOFFICE_PORT")
    if chosen:
        return int(chosen)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _soffice() -> str:
    configured = os.environ.get("SHEETBRIDGE_SOFFICE")
    if configured:
        return configured
    return shutil.which("soffice") or "/usr/lib/libreoffice/program/soffice"


class Office:
    """A private headless soffice process and a UNO connection to it."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sb-uno-"))
        self.port = _free_port()
        env = dict(os.environ)
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        env["HOME"] = str(self.workdir)
        env["TMPDIR"] = str(self.workdir)
        env["SAL_USE_VCLPLUGIN"] = "svp"
        profile = (self.workdir / "profile").as_uri()
        accept = f"socket,host=127.0.0.1,port={self.port};urp;"
        self.process = subprocess.Popen(
            [
                _soffice(),
                f"-env:UserInstallation={profile}",
                "--headless",
                "--invisible",
                "--norestore",
                "--nologo",
                "--nodefault",
                "--nolockcheck",
                f"--accept={accept}",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.desktop: Any = None
        self.context: Any = None

    def connect(self) -> Any:
        """Wait for soffice to listen, then return its Desktop."""
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext(
            "com.sun.star.bridge.UnoUrlResolver", local
        )
        url = (
            f"uno:socket,host=127.0.0.1,port={self.port};urp;"
            "StarOffice.ComponentContext"
        )
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"soffice exited early with code {self.process.returncode}"
                )
            try:
                context = resolver.resolve(url)
                break
            except NoConnectException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.context = context
        self.desktop = context.ServiceManager.createInstanceWithContext(
            "com.sun.star.frame.Desktop", context
        )
        return self.desktop

    def close(self) -> None:
        """Terminate soffice (politely, then by force) and drop the profile."""
        if self.desktop is not None:
            # The bridge dies with the process, which may raise; that is fine.
            with contextlib.suppress(Exception):
                self.desktop.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=20)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _type_into(
    context: Any, document: Any, sheet: Any, address: str, text: str
) -> None:
    """Enter ``text`` into a cell through the UI dispatcher, like keyboard input.

    Unlike ``setFormula`` this runs Calc's full input handling, which also
    applies automatic number formats (date, currency, percent, boolean).
    """
    controller = document.getCurrentController()
    controller.setActiveSheet(sheet)
    controller.select(sheet.getCellRangeByName(address))
    frame = controller.getFrame()
    dispatcher = context.ServiceManager.createInstanceWithContext(
        "com.sun.star.frame.DispatchHelper", context
    )
    dispatcher.executeDispatch(
        frame, ".uno:EnterString", "", 0, (_prop("StringName", text),)
    )


def apply_edits(context: Any, document: Any, edits: list[dict[str, Any]]) -> None:
    """Apply ``edits`` (see module docstring) to a Calc document.

    ``context`` is the remote component context of the office.
    """
    sheets = document.getSheets()
    for edit in edits:
        op = edit.get("op", "set")
        sheet_name = edit["sheet"]
        if not sheets.hasByName(sheet_name):
            raise KeyError(f"no sheet named {sheet_name!r}")
        sheet = sheets.getByName(sheet_name)
        if op == "set":
            cell = sheet.getCellRangeByName(edit["cell"])
            cell.setFormula(str(edit["value"]))
        elif op == "type":
            _type_into(context, document, sheet, edit["cell"], str(edit["value"]))
        elif op in ("delete_row", "insert_row"):
            row = int(edit["row"])
            count = int(edit.get("count", 1))
            if row < 1 or count < 1:
                raise ValueError(f"bad row/count in {edit!r}")
            rows = sheet.getRows()
            if op == "delete_row":
                rows.removeByIndex(row - 1, count)
            else:
                rows.insertByIndex(row - 1, count)
        else:
            raise ValueError(f"unknown op {op!r}")


def edit_file(source: Path, target: Path, edits: list[dict[str, Any]]) -> None:
    """Open ``source`` in Calc, apply ``edits`` and store as xlsx at ``target``."""
    office = Office()
    try:
        desktop = office.connect()
        document = desktop.loadComponentFromURL(
            source.resolve().as_uri(),
            "_blank",
            0,
            (_prop("Hidden", True), _prop("ReadOnly", False)),
        )
        if document is None:
            raise RuntimeError(f"LibreOffice could not open {source}")
        try:
            apply_edits(office.context, document, edits)
            document.calculateAll()
            document.storeToURL(
                target.resolve().as_uri(),
                (_prop("FilterName", XLSX_FILTER), _prop("Overwrite", True)),
            )
        finally:
            document.close(True)
    finally:
        office.close()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Command-line entry point: ``calc_edit.py IN.xlsx OUT.xlsx EDITS.json``."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    source, target, edits_path = Path(argv[1]), Path(argv[2]), Path(argv[3])
    # Turn SIGTERM into SystemExit so ``finally`` blocks stop soffice.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    edits = json.loads(edits_path.read_text(encoding="utf-8"))
    if not isinstance(edits, list):
        raise SystemExit("EDITS.json must hold a list of edits")
    edit_file(source, target, edits)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
