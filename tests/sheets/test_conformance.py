"""Replay real Sheets API traffic (recorded by gspread's tests) against the emulator.

The recordings live in ``../shared/conformance/sheets-api/`` beside the repo.
Each recording whose ``spreadsheets.batchUpdate`` kinds the emulator implements
is replayed step by step; answers are compared as that folder's README says.
Counts of recordings and steps passed, failed and skipped (and why) are printed.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sheetbridge.testing.emulator import EmulatorServer
from tests.support.server import free_port

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
RECORDINGS = CONFORMANCE / "sheets-api"

# The batchUpdate kinds the issue requires, and those the emulator answers
# besides (merges, which people make and a sync reports; number formats, which
# a sync sends; named ranges); recordings using only these must pass, those
# using others are skipped.
REQUIRED_KINDS = frozenset(
    {
        "addSheet",
        "deleteSheet",
        "insertDimension",
        "deleteDimension",
        "appendDimension",
        "updateSheetProperties",
        "updateSpreadsheetProperties",
        "mergeCells",
        "unmergeCells",
        "repeatCell",
        "addNamedRange",
        "deleteNamedRange",
    }
)
IMPLEMENTED_KINDS = REQUIRED_KINDS
# Recordings whose state came from a call that was dropped from the recording.
NOT_REPLAYABLE = {
    "ClientTest.test_import_csv": "its data came from a Drive CSV import, a Drive "
    "call the recording dropped",
}
ID_KEYS = ("sheetId", "namedRangeId", "protectedRangeId")
_REF = re.compile(r"\{(S\d+)\}")


@dataclass
class Outcome:
    """What happened to one recording."""

    name: str
    required: bool
    skipped_reason: str = ""
    steps: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    step_skips: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


def recordings() -> list[Path]:
    if not RECORDINGS.is_dir():
        message = f"conformance recordings not found at {RECORDINGS}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(f"\n*** SKIPPING Sheets API conformance replay: {message} ***\n")
        return []
    return sorted(RECORDINGS.glob("*.json"))


def test_emulator_answers_recorded_sheets_traffic_like_the_real_service(
    emulator: EmulatorServer,
) -> None:
    files = recordings()
    if not files:
        pytest.skip(f"no conformance recordings at {RECORDINGS}")
    with httpx.Client(base_url=emulator.base_url, timeout=30) as client:
        outcomes = [replay(client, path) for path in files]
    print_report(outcomes)
    required_failures = [
        f"{o.name}: {o.failures[0]}"
        for o in outcomes
        if o.required and not o.skipped_reason and o.failures
    ]
    assert not required_failures, "\n".join(required_failures)


def replay(client: httpx.Client, path: Path) -> Outcome:
    recording = json.loads(path.read_text())
    kinds = set(recording.get("batchUpdate_kinds", []))
    outcome = Outcome(path.stem, required=kinds <= REQUIRED_KINDS)
    if path.stem in NOT_REPLAYABLE:
        outcome.skipped_reason = NOT_REPLAYABLE[path.stem]
        return outcome
    missing = sorted(kinds - IMPLEMENTED_KINDS)
    if missing:
        outcome.skipped_reason = "batchUpdate kinds not implemented: " + ", ".join(
            missing
        )
        return outcome
    refs: dict[str, str] = {}
    ids: dict[Any, Any] = {}
    for step in recording["steps"]:
        op = step["op"]
        if op == "create":
            answer = client.post(
                "/v4/spreadsheets", json={"properties": {"title": step["title"]}}
            )
            answer.raise_for_status()
            refs[step["ref"]] = answer.json()["spreadsheetId"]
        elif op == "delete":
            client.delete(f"/drive/v3/files/{refs[step['ref']]}")
        else:
            run_http_step(client, step, refs, ids, outcome)
    return outcome


def run_http_step(
    client: httpx.Client,
    step: dict[str, Any],
    refs: dict[str, str],
    ids: dict[Any, Any],
    outcome: Outcome,
) -> None:
    if not _REF.search(step["path"]):
        outcome.step_skips["spreadsheet opened from a dropped Drive listing"] += 1
        outcome.steps["skipped"] += 1
        return
    path = _REF.sub(lambda m: refs[m.group(1)], step["path"])
    body = step.get("body")
    if body is not None:
        body = remap_ids(substitute(body, refs), ids)
    response = client.request(
        step["method"],
        quote(path, safe="/:!'$(),*+=@;&"),
        params=[tuple(pair) for pair in step.get("query", [])],
        json=body,
    )
    expected = substitute(step["expect"], refs)
    problem = compare(step, expected, response, ids)
    if problem:
        outcome.steps["failed"] += 1
        outcome.failures.append(f"{step['method']} {step['path']}: {problem}")
    else:
        outcome.steps["passed"] += 1


def compare(
    step: dict[str, Any],
    expected: dict[str, Any],
    response: httpx.Response,
    ids: dict[Any, Any],
) -> str:
    if response.status_code != expected["status"]:
        got = response.status_code
        return f"status {got} != {expected['status']}: {response.text[:300]}"
    actual = response.json() if response.content else None
    want = expected.get("body")
    if step.get("compare") == "sheet-properties":
        keys = ("sheetId", "title", "index", "sheetType", "gridProperties")
        want = [
            {k: s.get("properties", {}).get(k) for k in keys}
            for s in (want or {}).get("sheets", [])
        ]
        actual = [
            {k: s.get("properties", {}).get(k) for k in keys}
            for s in (actual or {}).get("sheets", [])
        ]
    difference = diff(want, actual, ids, "$")
    return difference or ""


def diff(want: Any, got: Any, ids: dict[Any, Any], where: str) -> str | None:
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return f"{where}: keys {sorted(want)} != {sorted(got)}"
        for key in want:
            if key in ID_KEYS and want[key] != got[key]:
                if ids.setdefault(want[key], got[key]) != got[key]:
                    return f"{where}.{key}: {got[key]} is not mapped from {want[key]}"
                continue
            problem = diff(want[key], got[key], ids, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            shown = json.dumps(got)[:200]
            return f"{where}: {len(got)} items, expected {len(want)}: {shown}"
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            problem = diff(a, b, ids, f"{where}[{index}]")
            if problem:
                return problem
        return None
    if want != got or (type(want) is not type(got) and not _same_number(want, got)):
        return f"{where}: {got!r} != {want!r}"
    return None


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and a == b


def substitute(value: Any, refs: dict[str, str]) -> Any:
    text = json.dumps(value)
    return json.loads(_REF.sub(lambda m: refs.get(m.group(1), m.group(0)), text))


def remap_ids(value: Any, ids: dict[Any, Any]) -> Any:
    if isinstance(value, dict):
        return {
            key: ids.get(item, item)
            if key in ID_KEYS and not isinstance(item, dict | list)
            else remap_ids(item, ids)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [remap_ids(item, ids) for item in value]
    return value


def print_report(outcomes: list[Outcome]) -> None:
    skipped = [o for o in outcomes if o.skipped_reason]
    ran = [o for o in outcomes if not o.skipped_reason]
    passed = [o for o in ran if not o.failures]
    failed = [o for o in ran if o.failures]
    steps: Counter[str] = Counter()
    step_skips: Counter[str] = Counter()
    for outcome in ran:
        steps.update(outcome.steps)
        step_skips.update(outcome.step_skips)
    required = [o for o in ran if o.required]
    print("\n=== Sheets API conformance replay ===")
    print(
        f"recordings: {len(outcomes)} total, {len(passed)} passed, "
        f"{len(failed)} failed, {len(skipped)} skipped"
    )
    print(
        f"required recordings (values calls + required kinds): {len(required)}, "
        f"passed {sum(1 for o in required if not o.failures)}"
    )
    print(
        f"steps: {steps['passed']} passed, {steps['failed']} failed, "
        f"{steps['skipped']} skipped"
    )
    for reason, count in step_skips.most_common():
        print(f"  skipped steps: {count} x {reason}")
    reasons = Counter(o.skipped_reason for o in skipped)
    for reason, count in reasons.most_common():
        print(f"  skipped recordings: {count} x {reason}")
    for outcome in failed:
        tag = "REQUIRED " if outcome.required else ""
        print(f"  {tag}FAILED {outcome.name}: {outcome.failures[0]}")
