"""What a workbook's zip package holds, looked at part by part.

A write loads the workbook with openpyxl and saves it again, and openpyxl
keeps only what it understands: cells, styles, comments, tables, pivot tables,
charts, pictures (with Pillow) and the like. :func:`unkept_content` finds what
it would silently leave out, so that a write can refuse instead.
"""

from __future__ import annotations

import functools
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeAlias, TypeVar
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

from openpyxl.cell.rich_text import CellRichText, TextBlock
from openpyxl.cell.text import Text
from openpyxl.utils.cell import column_index_from_string, coordinate_to_tuple
from openpyxl.xml.functions import fromstring, iterparse

try:
    from PIL import Image as PillowImage
except ImportError:  # pragma: no cover - Pillow is a dependency
    PillowImage = None  # type: ignore[assignment]

_RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_DOC_RELS_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_DRAWING_NS = "http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing"
_CHART_NS = "http://schemas.openxmlformats.org/drawingml/2006/chart"
_BLIP = "{http://schemas.openxmlformats.org/drawingml/2006/main}blip"

# Picture formats openpyxl saves again (others it cannot, or converts badly).
_KEPT_PICTURES = {"PNG", "JPEG", "GIF", "BMP", "TIFF"}
# Relationship types (the last part of the type's URI) of a worksheet that
# openpyxl saves again, or whose loss changes nothing a person sees.
_KEPT_SHEET_RELS = {
    "drawing",
    "vmlDrawing",  # checked on its own: openpyxl keeps the comments in it only
    "comments",
    "table",
    "pivotTable",
    "hyperlink",
    "printerSettings",
}
# What is lost with a worksheet relationship openpyxl does not keep.
_SHEET_REL_KINDS = {
    "oleObject": "embedded objects",
    "package": "embedded objects",
    "ctrlProp": "form controls",
    "control": "form controls",
    "activeXControlBinary": "form controls",
    "slicer": "slicers",
    "timeline": "timelines",
    "threadedComment": "threaded comments",
    "image": "a background picture",
    "customProperty": "custom cell properties",
    "webExtension": "add-in content",
}
# Sheets openpyxl does not read at all (it keeps worksheets and chart sheets).
_SHEET_KINDS = {
    "macrosheet": "an Excel 4 macro sheet",
    "dialogsheet": "a dialog sheet",
}
_DRAWN_KINDS = {
    "sp": "shapes or text boxes",
    "cxnSp": "shapes or text boxes",
    "grpSp": "grouped shapes",
    "contentPart": "ink drawings",
    "AlternateContent": "slicers, form controls or other newer drawing objects",
}
_ANCHOR_PARTS = {"from", "to", "pos", "ext", "clientData"}
# In a worksheet's own XML: content kept in an extension openpyxl drops.
_SHEET_EXTENSIONS = (
    (re.compile(rb"<(?:\w+:)?sparklineGroups\b"), "sparklines"),
    (
        re.compile(rb"<x14:dataValidations\b"),
        "data validation rules that use other tabs",
    ),
)
# In a VML drawing, which openpyxl writes anew for comments ("Note") only.
_VML_LOSSES = (
    (
        re.compile(rb"""ObjectType\s*=\s*["'](?!Note["'])\w+["']""", re.IGNORECASE),
        "form controls",
    ),
    (re.compile(rb"<v:imagedata\b"), "pictures in the page header or footer"),
)


@dataclass(frozen=True)
class Unkept:
    """Content of a workbook that a save through openpyxl would delete."""

    what: str
    tab: str | None = None


def tab_parts(archive: zipfile.ZipFile) -> dict[str, str]:
    """Map the path of each sheet's part in ``archive`` to the tab's name."""
    return {part: tab for tab, part, _ in _sheets(archive)}


def unkept_content(archive: zipfile.ZipFile) -> list[Unkept]:
    """What of this workbook a load and save by openpyxl would delete."""
    found: list[Unkept] = []
    names = set(archive.namelist())
    if any(name.lower().endswith("vbaproject.bin") for name in names):
        found.append(Unkept("macros"))
    for tab, part, kind in _sheets(archive):
        if kind in _SHEET_KINDS:
            found.append(Unkept(_SHEET_KINDS[kind], tab))
            continue
        if kind != "worksheet":
            continue
        for what in _unkept_of_sheet(archive, names, part):
            found.append(Unkept(what, tab))
    return list(dict.fromkeys(found))


def _unkept_of_sheet(
    archive: zipfile.ZipFile, names: set[str], part: str
) -> Iterator[str]:
    if part in names:
        xml = archive.read(part)
        for pattern, what in _SHEET_EXTENSIONS:
            if pattern.search(xml):
                yield what
    for kind, target in _relations(archive, part):
        if kind in _SHEET_REL_KINDS:
            yield _SHEET_REL_KINDS[kind]
        elif kind not in _KEPT_SHEET_RELS:
            yield f"content of a kind the app cannot keep ({kind})"
        elif kind == "vmlDrawing" and target in names:
            vml = archive.read(target)
            for pattern, what in _VML_LOSSES:
                if pattern.search(vml):
                    yield what
        elif kind == "drawing" and target in names:
            yield from _unkept_of_drawing(archive, names, target)


def _unkept_of_drawing(
    archive: zipfile.ZipFile, names: set[str], part: str
) -> Iterator[str]:
    try:
        tree = fromstring(archive.read(part))
    except ParseError:
        yield "drawings the app cannot read"
        return
    pictures = dict(_relations(archive, part, by_id=True))
    for anchor in tree:
        for drawn in anchor:
            name = _local(drawn.tag)
            if name in _ANCHOR_PARTS:
                continue
            if name in _DRAWN_KINDS:
                yield _DRAWN_KINDS[name]
            elif name == "graphicFrame":
                if drawn.find(f".//{{{_CHART_NS}}}chart") is None:
                    yield "SmartArt or other graphics"
            elif name == "pic":
                blip = drawn.find(f".//{_BLIP}")
                embed = None if blip is None else blip.get(f"{{{_DOC_RELS_NS}}}embed")
                target = pictures.get(embed or "")
                if target is None or not _picture_kept(archive, names, target):
                    yield "pictures in a format the app cannot keep (such as EMF)"


def _picture_kept(archive: zipfile.ZipFile, names: set[str], part: str) -> bool:
    if PillowImage is None or part not in names:
        return False
    try:
        with PillowImage.open(BytesIO(archive.read(part))) as image:
            return str(image.format).upper() in _KEPT_PICTURES
    except (OSError, ValueError):
        return False


def _sheets(archive: zipfile.ZipFile) -> Iterator[tuple[str, str, str]]:
    """(tab name, part path, kind) of each sheet, kind being the last part of
    its relationship type: "worksheet", "chartsheet", "macrosheet", …"""
    workbook = _workbook_part(archive)
    try:
        tree = fromstring(archive.read(workbook))
    except (KeyError, ParseError):
        return
    targets = dict(_relations(archive, workbook, by_id=True, with_kind=True))
    for sheet in tree.iter(f"{{{_MAIN_NS}}}sheet"):
        found = targets.get(sheet.get(f"{{{_DOC_RELS_NS}}}id") or "")
        if found is not None:
            kind, part = found
            yield str(sheet.get("name", "")), part, kind


def counts_days_from_1904(archive: zipfile.ZipFile) -> bool:
    """Whether the workbook is set to the 1904 date system, where a number
    standing for a date counts days from 1 January 1904."""
    try:
        tree = fromstring(archive.read(_workbook_part(archive)))
    except (KeyError, ParseError):
        return False
    properties = tree.find(f"{{{_MAIN_NS}}}workbookPr")
    flag = properties.get("date1904", "") if properties is not None else ""
    return str(flag).strip().lower() in ("1", "true")


def _workbook_part(archive: zipfile.ZipFile) -> str:
    for kind, target in _relations(archive, ""):
        if kind == "officeDocument":
            return str(target)
    return "xl/workbook.xml"


def _relations(
    archive: zipfile.ZipFile,
    part: str,
    *,
    by_id: bool = False,
    with_kind: bool = False,
) -> Iterator[tuple[str, Any]]:
    """The relationships of ``part``: (kind, target part) pairs, or with
    ``by_id`` (id, target) or (id, (kind, target)) pairs. External targets
    (links to web pages) are skipped."""
    folder, name = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", f"{name}.rels")
    try:
        tree = fromstring(archive.read(rels))
    except (KeyError, ParseError):
        return
    for rel in tree.iter(f"{{{_RELS_NS}}}Relationship"):
        kind = str(rel.get("Type", "")).rsplit("/", 1)[-1]
        target = str(rel.get("Target", ""))
        if rel.get("TargetMode") != "External":
            if target.startswith("/"):
                target = target[1:]
            else:
                target = posixpath.normpath(posixpath.join(folder, target))
        if by_id:
            yield str(rel.get("Id", "")), (kind, target) if with_kind else target
        else:
            yield kind, target


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class BadXml:
    """Where a workbook part is no well-formed XML, and why."""

    part: str
    reason: str
    tab: str | None = None
    cell: str | None = None


_CELL_START = re.compile(rb"""<(?:\w+:)?c\s[^>]*?\br\s*=\s*["']([A-Za-z]+[0-9]+)["']""")
_SHARED_STRING_START = re.compile(rb"<(?:\w+:)?si[\s>]")


def find_bad_xml(archive: zipfile.ZipFile) -> BadXml | None:
    """The first XML part of ``archive`` that does not parse, with the tab and
    cell it belongs to when cheaply found."""
    tabs = tab_parts(archive)
    for name in archive.namelist():
        if not name.endswith((".xml", ".rels", ".vml")):
            continue
        data = archive.read(name)
        try:
            fromstring(data)
        except ParseError as exc:
            reason = str(exc).split(":", 1)[0]
            offset = _offset(data, *getattr(exc, "position", (1, 0)))
            if name in tabs:
                found = list(_CELL_START.finditer(data, 0, offset))
                cell = found[-1][1].decode() if found else None
                return BadXml(name, reason, tabs[name], cell)
            if name.endswith("sharedStrings.xml"):
                index = len(_SHARED_STRING_START.findall(data, 0, offset)) - 1
                tab, cell = _cell_showing(archive, tabs, index)
                return BadXml(name, reason, tab, cell)
            return BadXml(name, reason)
    return None


def _offset(data: bytes, line: int, column: int) -> int:
    """The byte offset of a parser's (1-based line, 0-based column)."""
    start = 0
    for _ in range(line - 1):
        start = data.index(b"\n", start) + 1
    return min(len(data), start + column)


def _cell_showing(
    archive: zipfile.ZipFile, tabs: dict[str, str], index: int
) -> tuple[str | None, str | None]:
    """The first tab and cell showing shared string number ``index``."""
    if index < 0:
        return None, None
    showing = re.compile(
        rb"""<(?:\w+:)?c\s[^>]*?\br\s*=\s*["']([A-Za-z]+[0-9]+)["'][^>]*>"""
        rb"\s*<(?:\w+:)?v>\s*" + str(index).encode() + rb"\s*<"
    )
    for part, tab in tabs.items():
        try:
            data = archive.read(part)
        except KeyError:
            continue
        for found in showing.finditer(data):
            if re.search(rb"""\bt\s*=\s*["']s["']""", found[0]):
                return tab, found[1].decode()
    return None, None


FormulaResults: TypeAlias = dict[tuple[int, int], tuple[str, str]]
"""Per (row, column) of a formula cell: the type and text of its saved result."""

_HAS_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")
_CELL_TAG = f"{{{_MAIN_NS}}}c"
_ROW_TAG = f"{{{_MAIN_NS}}}row"
_FORMULA_TAG = f"{{{_MAIN_NS}}}f"
_VALUE_TAG = f"{{{_MAIN_NS}}}v"
# Result types a formula cell may have: number, text, boolean, error.
_RESULT_TYPES = {"n", "str", "b", "e"}


def formula_results(archive: zipfile.ZipFile) -> dict[str, FormulaResults]:
    """Per tab, the results saved with its formula cells."""
    return _cells_by_tab(archive, _HAS_FORMULA.search, _saved_result)


def _saved_result(cell: Any) -> tuple[str, str] | None:
    kind = cell.get("t", "n")
    formula = cell.find(_FORMULA_TAG)
    value = cell.find(_VALUE_TAG)
    if formula is None or value is None or value.text is None:
        return None
    return (kind, value.text) if kind in _RESULT_TYPES else None


_Found = TypeVar("_Found")


def _cells_by_tab(
    archive: zipfile.ZipFile,
    worth_reading: Callable[[bytes], object],
    found_in: Callable[[Any], _Found | None],
) -> dict[str, dict[tuple[int, int], _Found]]:
    """Per tab whose part is ``worth_reading``, what ``found_in`` finds in
    its cells, by (row, column); tabs where it finds nothing left out."""
    found: dict[str, dict[tuple[int, int], _Found]] = {}
    for part, tab in tab_parts(archive).items():
        try:
            data = archive.read(part)
        except KeyError:
            continue
        if not worth_reading(data):
            continue
        cells: dict[tuple[int, int], _Found] = {}
        for _, element in iterparse(BytesIO(data)):
            if element.tag == _CELL_TAG:
                value = found_in(element)
                ref = element.get("r")
                if value is not None and ref:
                    cells[coordinate_to_tuple(ref)] = value
                element.clear()
            elif element.tag == _ROW_TAG:
                element.clear()
        if cells:
            found[tab] = cells
    return found


# A run of text with a format of its own, in shared strings or in a cell.
_RUN_START = re.compile(rb"<(?:\w+:)?r[\s>]")
_SHARED_ITEM_TAG = f"{{{_MAIN_NS}}}si"
_INLINE_TAG = f"{{{_MAIN_NS}}}is"
RichTextCells: TypeAlias = dict[tuple[int, int], CellRichText]


def rich_text_cells(archive: zipfile.ZipFile) -> dict[str, RichTextCells]:
    """Per tab, the cells whose text has parts formatted apart (a word in
    bold, say), as openpyxl holds such text; each part's text as stored.

    openpyxl reads such text as plain unless asked not to, and asked, it
    reads the text of every cell without the escapes the workbook stores."""
    shared = _rich_shared_strings(archive)
    return _cells_by_tab(
        archive,
        lambda data: shared or _RUN_START.search(data),
        lambda cell: _rich_text_of(cell, shared),
    )


def _rich_shared_strings(archive: zipfile.ZipFile) -> dict[int, CellRichText]:
    """The shared strings with parts formatted apart, by their index."""
    workbook = _workbook_part(archive)
    kinds = dict(_relations(archive, workbook))
    try:
        data = archive.read(kinds.get("sharedStrings", "xl/sharedStrings.xml"))
    except KeyError:
        return {}
    if not _RUN_START.search(data):
        return {}
    rich: dict[int, CellRichText] = {}
    index = 0
    for _, element in iterparse(BytesIO(data)):
        if element.tag == _SHARED_ITEM_TAG:
            runs = _formatted_runs(element)
            if runs is not None:
                rich[index] = runs
            index += 1
            element.clear()
    return rich


def _rich_text_of(cell: Any, shared: dict[int, CellRichText]) -> CellRichText | None:
    kind = cell.get("t")
    if kind == "s":
        value = cell.find(_VALUE_TAG)
        text = value.text if value is not None else None
        return shared.get(int(text)) if text and text.strip().isdigit() else None
    if kind == "inlineStr":
        inline = cell.find(_INLINE_TAG)
        return _formatted_runs(inline) if inline is not None else None
    return None


def _formatted_runs(element: Any) -> CellRichText | None:
    """The runs of a string element, if any has a format of its own."""
    text = Text.from_tree(element)
    if not any(run.rPr is not None for run in text.r):
        return None
    return CellRichText(
        [
            TextBlock(run.rPr, run.t or "") if run.rPr is not None else run.t or ""
            for run in text.r
        ]
    )


# A formula cell as openpyxl writes it: no type, an <f> and an empty <v>.
_SAVED_FORMULA = re.compile(
    rb'<c r="([A-Z]+)([0-9]+)"([^>]*)>(<f\b[^>]*(?:/>|>[^<]*</f>))'
    rb"(?:<v\s*/>|<v>\s*</v>)</c>"
)


def put_back_formula_results(
    saved: zipfile.ZipFile, out: zipfile.ZipFile, results: dict[str, FormulaResults]
) -> None:
    """Copy the package openpyxl ``saved`` to ``out``, giving each formula cell
    of a tab in ``results`` the result saved for it there."""
    tabs = tab_parts(saved)
    for info in saved.infolist():
        data = saved.read(info.filename)
        found = results.get(tabs.get(info.filename, ""), {})
        if found:
            data = _SAVED_FORMULA.sub(
                functools.partial(_with_result, results=found), data
            )
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)


def _with_result(cell: re.Match[bytes], results: FormulaResults) -> bytes:
    letters, row, attributes, formula = cell.groups()
    result = results.get((int(row), column_index_from_string(letters.decode())))
    if result is None:
        return cell[0]
    kind, text = result
    typed = b"" if kind == "n" else f' t="{kind}"'.encode()
    value = escape(text).replace("\r", "&#13;").encode()
    return (
        b'<c r="' + letters + row + b'"' + attributes + typed + b">"
        + formula + b"<v>" + value + b"</v></c>"
    )  # fmt: skip
