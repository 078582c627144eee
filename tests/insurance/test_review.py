"""Conflicts wait for a person; an import can be undone."""

from __future__ import annotations

import threading
import time
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from openpyxl import load_workbook
from sqlalchemy import delete, select

from sheetbridge.insurance import review
from sheetbridge.insurance.models import Customer, Policy, User
from sheetbridge.insurance.review import forget_sheet
from sheetbridge.insurance.services import Book, StaleVersion
from sheetbridge.insurance.sync_jobs import FROM_SHEET, TO_SHEET
from sheetbridge.sync.models import SyncConflict, SyncTarget
from sheetbridge.web.app import create_app
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer
from tests.insurance.test_workbook_sync import columns, run_sync, workbook_path


def edit_sheet_cell(runtime: Runtime, row: int, header: str, value: object) -> int:
    """Edit one Customers cell in alice's workbook; returns that row's record ID."""
    path = workbook_path(runtime, "alice")
    book = load_workbook(path)
    sheet = book["Customers"]
    sheet.cell(row, columns(sheet)[header]).value = value
    book.save(path)
    return int(sheet.cell(row, 1).value)


def edit_app_city(runtime: Runtime, record_id: int, city: str) -> None:
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.city = city


def sheet_city(runtime: Runtime, record_id: int) -> object:
    sheet = load_workbook(workbook_path(runtime, "alice"))["Customers"]
    for row in range(2, sheet.max_row + 1):
        if sheet.cell(row, 1).value == record_id:
            return sheet.cell(row, columns(sheet)["City"]).value
    raise AssertionError(record_id)


def app_city(runtime: Runtime, record_id: int) -> str:
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        return customer.city


def unsynced_city_conflict(runtime: Runtime) -> int:
    """A city edited in alice's sheet and in the app, with no earlier sync of
    it with the sheet (as a book pointed away and back); the record's ID."""
    run_sync(runtime, "alice", TO_SHEET)
    with runtime.db.session() as session:
        target = session.scalars(
            select(SyncTarget).join(User).where(User.username == "alice")
        ).one()
        forget_sheet(session, target.id)
    record_id = edit_sheet_cell(runtime, 2, "City", "Sheet City")
    edit_app_city(runtime, record_id, "App City")
    return record_id


def make_conflict(runtime: Runtime) -> tuple[TestClient, int, int]:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "City", "Sheet City")
    edit_app_city(runtime, record_id, "App City")
    run_sync(runtime, "alice", FROM_SHEET)
    client = TestClient(create_app(runtime, workers=False))
    return client, record_id, 0


def test_conflict_is_stored_once_with_both_values_and_the_base(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    run_sync(runtime, "alice", TO_SHEET)

    listed = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["alice"])
    ).json()["conflicts"]

    assert len(listed) == 1
    conflict = listed[0]
    assert (conflict["record_id"], conflict["field"], conflict["column"]) == (
        record_id,
        "city",
        "City",
    )
    assert (conflict["app"], conflict["sheet"]) == ("App City", "Sheet City")
    assert conflict["base"] not in ("App City", "Sheet City")
    assert conflict["base_known"] is True
    assert conflict["detected_at"].endswith("Z"), conflict["detected_at"]
    assert conflict["book"] == "alice"
    others = client.get("/api/insurance/sync/conflicts", headers=bearer(tokens["bob"]))
    assert others.json()["conflicts"] == []
    (seen,) = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["admin"])
    ).json()["conflicts"]
    assert (seen["id"], seen["book"]) == (conflict["id"], "alice")


def test_a_conflict_with_no_earlier_sync_of_the_sheet_says_its_base_is_unknown(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    unsynced_city_conflict(runtime)
    run_sync(runtime, "alice", TO_SHEET)
    client = TestClient(create_app(runtime, workers=False))

    (conflict,) = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["alice"])
    ).json()["conflicts"]

    assert (conflict["app"], conflict["sheet"]) == ("App City", "Sheet City")
    assert conflict["base"] is None and conflict["base_known"] is False


def open_conflict_ids(client: TestClient, token: str) -> list[int]:
    listed = client.get("/api/insurance/sync/conflicts", headers=bearer(token))
    return [conflict["id"] for conflict in listed.json()["conflicts"]]


def resolve(
    client: TestClient, token: str, conflict_id: int, body: dict[str, object]
) -> Response:
    return client.post(
        f"/api/insurance/sync/conflicts/{conflict_id}/resolve",
        json=body,
        headers=bearer(token),
    )


def conflict_then_sheet_city(
    runtime: Runtime, tokens: dict[str, str], city: str
) -> tuple[TestClient, int, int]:
    """A city conflict in alice's book, then ``city`` typed into its sheet
    cell and imported: the client, the record's ID and the conflict's."""
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    edit_sheet_cell(runtime, 2, "City", city)
    run_sync(runtime, "alice", FROM_SHEET)
    return client, record_id, conflict_id


def test_a_conflict_found_again_is_the_same_conflict_with_the_newest_values(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, first = conflict_then_sheet_city(
        runtime, tokens, "Other Sheet City"
    )

    (again,) = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["alice"])
    ).json()["conflicts"]
    assert (again["id"], again["record_id"]) == (first, record_id)
    assert (again["app"], again["sheet"]) == ("App City", "Other Sheet City")


def test_a_conflict_closes_itself_when_both_sides_come_to_agree(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, conflict_id = conflict_then_sheet_city(
        runtime, tokens, "App City"
    )

    assert open_conflict_ids(client, tokens["alice"]) == []
    with runtime.db.read_session() as session:
        closed = session.get(SyncConflict, conflict_id)
        assert closed is not None
        assert (closed.resolution, closed.resolved_at is not None) == (
            "converged",
            True,
        )
    assert app_city(runtime, record_id) == "App City"


def test_another_users_or_a_missing_conflict_is_not_found(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, _, _ = make_conflict(runtime)
    (alices,) = open_conflict_ids(client, tokens["alice"])

    answers = [
        resolve(client, tokens["bob"], conflict_id, {"choice": "sheet"})
        for conflict_id in (alices, alices + 1000)
    ]

    assert [answer.status_code for answer in answers] == [404, 404]
    assert answers[0].json()["detail"] == f"conflict {alices} does not exist"
    assert open_conflict_ids(client, tokens["alice"]) == [alices]


def test_a_resolution_the_record_would_refuse_is_a_422_and_the_conflict_stays_open(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "ZIP", "ABCDE")
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.zip_code = "04609"
    run_sync(runtime, "alice", FROM_SHEET)
    client = TestClient(create_app(runtime, workers=False))
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])

    answers = [
        resolve(client, tokens["alice"], conflict_id, body)
        for body in ({"choice": "edit", "value": "ABCDE"}, {"choice": "sheet"})
    ]

    assert [answer.status_code for answer in answers] == [422, 422]
    assert all("zip_code" in answer.text for answer in answers)
    assert open_conflict_ids(client, tokens["alice"]) == [conflict_id]
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
    assert customer is not None and customer.zip_code == "04609"


def test_a_refused_edit_quotes_its_value_cut_short_and_an_empty_one_in_words(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, _, _ = make_conflict(runtime)
    (city,) = open_conflict_ids(client, tokens["alice"])
    long = resolve(
        client, tokens["alice"], city, {"choice": "edit", "value": "x" * 40_000}
    )
    resolve(client, tokens["alice"], city, {"choice": "sheet"})
    _, _, premium = policy_premium_conflict(runtime, tokens["alice"])
    empty = resolve(client, tokens["alice"], premium, {"choice": "edit", "value": None})

    assert (long.status_code, empty.status_code) == (422, 422)
    (said,) = long.json()["detail"]
    assert said["msg"].startswith("city 'xxxx") and "…' is refused: " in said["msg"]
    assert len(said["msg"]) < 300
    (said,) = empty.json()["detail"]
    assert said["msg"].startswith("premium: an empty value is refused: ")


def test_an_edit_without_a_value_or_a_keep_with_one_is_a_422_naming_value(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])

    answers = [
        resolve(client, tokens["alice"], conflict_id, body)
        for body in ({"choice": "edit"}, {"choice": "app", "value": "Elm Town"})
    ]

    assert [answer.status_code for answer in answers] == [422, 422]
    assert [answer.json()["detail"][0]["field"] for answer in answers] == [
        "value",
        "value",
    ]
    assert open_conflict_ids(client, tokens["alice"]) == [conflict_id]
    assert app_city(runtime, record_id) == "App City"


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ({"choice": "sheet"}, "Sheet City"),
        ({"choice": "edit", "value": "Typed City"}, "Typed City"),
    ],
    ids=["keep-sheet", "edit"],
)
def test_a_resolution_over_an_app_value_edited_since_is_refused_until_seen(
    runtime: Runtime, tokens: dict[str, str], body: dict[str, object], kept: str
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    edit_app_city(runtime, record_id, "Later City")

    refused = resolve(client, tokens["alice"], conflict_id, body)

    assert refused.status_code == 409
    assert "changed after this conflict was found" in refused.json()["detail"]
    assert "it is now 'Later City'" in refused.json()["detail"]
    assert app_city(runtime, record_id) == "Later City"
    listed = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["alice"])
    ).json()["conflicts"]
    assert [(c["id"], c["app"]) for c in listed] == [(conflict_id, "Later City")]
    again = resolve(client, tokens["alice"], conflict_id, body)
    assert again.status_code == 200 and app_city(runtime, record_id) == kept


@pytest.mark.parametrize(
    ("first", "told"),
    [
        ({"choice": "sheet"}, "the sheet's value, 'Sheet City', was kept by alice"),
        ({"choice": "app"}, "the app's value, 'App City', was kept by alice"),
        (
            {"choice": "edit", "value": "Typed City"},
            "a new value, 'Typed City', was saved by alice",
        ),
    ],
    ids=["sheet", "app", "edit"],
)
def test_a_second_resolution_says_how_the_first_settled_it_and_changes_nothing(
    runtime: Runtime, tokens: dict[str, str], first: dict[str, object], told: str
) -> None:
    # Two windows showing the same conflict: the later choice is refused, in
    # words that say what was kept.
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    assert resolve(client, tokens["alice"], conflict_id, first).status_code == 200
    kept = app_city(runtime, record_id)

    later = resolve(client, tokens["alice"], conflict_id, {"choice": "app"})

    assert later.status_code == 409
    assert later.json()["detail"] == (
        f"conflict {conflict_id} was already resolved: {told}; your choice was "
        "not applied"
    )
    assert app_city(runtime, record_id) == kept


def test_two_windows_choosing_at_one_moment_get_one_choice_and_one_refusal(
    runtime: Runtime, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second choice arrives while the first one's transaction is open
    # (two web processes on PostgreSQL): it waits for it, then is refused.
    client, record_id, _ = make_conflict(runtime)
    other_window = TestClient(create_app(runtime, workers=False))
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    real_resolve = review.resolve_conflict
    first_inside = threading.Event()

    def resolve_slowly(*args: Any, **kwargs: Any) -> SyncConflict:
        row = real_resolve(*args, **kwargs)
        if not first_inside.is_set():
            first_inside.set()
            time.sleep(0.5)  # its transaction stays open meanwhile
        return row

    monkeypatch.setattr(review, "resolve_conflict", resolve_slowly)
    answers: dict[str, Response] = {}
    first = threading.Thread(
        target=lambda: answers.setdefault(
            "sheet", resolve(client, tokens["alice"], conflict_id, {"choice": "sheet"})
        )
    )
    first.start()
    assert first_inside.wait(10)
    answers["app"] = resolve(
        other_window, tokens["alice"], conflict_id, {"choice": "app"}
    )
    first.join(10)

    assert answers["sheet"].status_code == 200
    assert answers["app"].status_code == 409
    assert (
        "the sheet's value, 'Sheet City', was kept" in answers["app"].json()["detail"]
    )
    assert app_city(runtime, record_id) == "Sheet City"


def test_a_record_saved_by_someone_else_while_choosing_is_a_409_and_stays_open(
    runtime: Runtime, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])

    def saved_meanwhile(*args: Any, **kwargs: Any) -> Customer:
        raise StaleVersion(None)  # as a save in another process that landed first

    monkeypatch.setattr(Book, "update_customer", saved_meanwhile)
    answer = resolve(client, tokens["alice"], conflict_id, {"choice": "sheet"})

    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"customer {record_id} was changed in the app while you chose; nothing "
        "was changed: look at the conflict again and choose"
    )
    assert open_conflict_ids(client, tokens["alice"]) == [conflict_id]


def test_deleting_a_record_closes_its_open_conflicts(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    alice = bearer(tokens["alice"])
    for policy in client.get(
        f"/api/policies?customer_id={record_id}&limit=200", headers=alice
    ).json()["items"]:
        deleted = client.delete(f"/api/policies/{policy['id']}", headers=alice)
        assert deleted.status_code == 204, deleted.text

    assert client.delete(f"/api/customers/{record_id}", headers=alice).status_code == (
        204
    )

    assert open_conflict_ids(client, tokens["alice"]) == []
    with runtime.db.read_session() as session:
        closed = session.get(SyncConflict, conflict_id)
        assert closed is not None and closed.resolution == "record deleted"


def test_a_conflict_whose_record_is_gone_closes_when_chosen_and_says_why(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    with runtime.db.session() as session:  # gone without the app's delete
        session.execute(delete(Policy).where(Policy.customer_id == record_id))
        session.execute(delete(Customer).where(Customer.id == record_id))

    answer = resolve(client, tokens["alice"], conflict_id, {"choice": "sheet"})

    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"customer {record_id} is no longer in the book; the conflict is closed "
        "and nothing was changed"
    )
    assert open_conflict_ids(client, tokens["alice"]) == []


def test_keeping_the_app_value_keeps_the_one_the_app_has_now(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])
    edit_app_city(runtime, record_id, "Later City")

    kept = resolve(client, tokens["alice"], conflict_id, {"choice": "app"})

    assert kept.status_code == 200 and kept.json()["app"] == "Later City"
    assert kept.json()["kept"] == "Later City"
    run_sync(runtime, "alice", TO_SHEET)
    assert sheet_city(runtime, record_id) == "Later City"


def test_keep_app_is_written_to_the_sheet_by_the_next_sync(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    conflict = client.get(
        "/api/insurance/sync/conflicts", headers=bearer(tokens["alice"])
    ).json()["conflicts"][0]

    resolved = resolve(client, tokens["alice"], conflict["id"], {"choice": "app"})
    run_sync(runtime, "alice", TO_SHEET)

    assert resolved.status_code == 200
    assert sheet_city(runtime, record_id) == "App City"
    assert app_city(runtime, record_id) == "App City"
    again = client.get("/api/insurance/sync/conflicts", headers=bearer(tokens["alice"]))
    assert again.json()["conflicts"] == []


def test_keep_sheet_and_edit_settle_both_sides(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    client, record_id, _ = make_conflict(runtime)
    alice = bearer(tokens["alice"])
    conflict = client.get("/api/insurance/sync/conflicts", headers=alice).json()[
        "conflicts"
    ][0]
    kept = resolve(client, tokens["alice"], conflict["id"], {"choice": "sheet"})
    assert app_city(runtime, record_id) == "Sheet City"
    assert kept.json()["resolution"] == "sheet"
    assert kept.json()["kept"] == "Sheet City"
    summary = run_sync(runtime, "alice", TO_SHEET)["summary"]
    assert summary["conflicts"] == 0 and summary["written_cells"] == 0

    edit_app_city(runtime, record_id, "App Again")
    edit_sheet_cell(runtime, 2, "City", "Sheet Again")
    run_sync(runtime, "alice", FROM_SHEET)
    second = client.get("/api/insurance/sync/conflicts", headers=alice).json()[
        "conflicts"
    ][0]
    edit = {"choice": "edit", "value": "x" * 101}
    bad = resolve(client, tokens["alice"], second["id"], edit)
    assert bad.status_code == 422
    edit = {"choice": "edit", "value": "Agreed City"}
    edited = resolve(client, tokens["alice"], second["id"], edit).json()
    # The answer shows what the record holds now, beside the sides it had.
    assert (edited["app"], edited["sheet"]) == ("App Again", "Sheet Again")
    assert edited["kept"] == "Agreed City"
    run_sync(runtime, "alice", TO_SHEET)
    assert app_city(runtime, record_id) == "Agreed City"
    assert sheet_city(runtime, record_id) == "Agreed City"


def import_cities(
    runtime: Runtime, tokens: dict[str, str], *rows: int
) -> tuple[TestClient, dict[str, str], list[int]]:
    """A new city typed into each row of alice's synced sheet, and imported:
    a client, her headers and the row's customers."""
    customers = [
        edit_sheet_cell(runtime, row, "City", f"Imported {n}")
        for n, row in enumerate(rows, 1)
    ]
    run_sync(runtime, "alice", FROM_SHEET)
    client = TestClient(create_app(runtime, workers=False))
    return client, bearer(tokens["alice"]), customers


def last_import(client: TestClient, headers: dict[str, str]) -> int:
    recent = client.get("/api/insurance/sync/status", headers=headers).json()
    return max(job["id"] for job in recent["recent"] if job["kind"] == FROM_SHEET)


def customer_in_row(runtime: Runtime, row: int) -> int:
    sheet = load_workbook(workbook_path(runtime, "alice"))["Customers"]
    return int(sheet.cell(row, 1).value)


def test_undo_import_restores_imported_values_but_not_ones_edited_since(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    before_first = app_city(runtime, customer_in_row(runtime, 2))
    client, alice, (first, second) = import_cities(runtime, tokens, 2, 3)
    job_id = last_import(client, alice)
    edit_app_city(runtime, second, "Edited After Import")
    with runtime.db.session() as session:
        customer = session.get(Customer, first)
        assert customer is not None
        customer.phone = "207-555-0199"  # not a value the import changed

    undone = client.post(f"/api/insurance/sync/jobs/{job_id}/undo", headers=alice)

    assert undone.status_code == 200
    body = undone.json()
    assert body["restored"] == [{"entity": "customer", "record_id": first}]
    assert body["left_alone"][0]["record_id"] == second
    assert app_city(runtime, first) == before_first
    with runtime.db.read_session() as session:
        assert session.get(Customer, first).phone == "207-555-0199"  # type: ignore[union-attr]
    assert app_city(runtime, second) == "Edited After Import"
    run_sync(runtime, "alice", TO_SHEET)
    assert sheet_city(runtime, first) == before_first
    twice = client.post(f"/api/insurance/sync/jobs/{job_id}/undo", headers=alice)
    assert twice.status_code == 409  # not a success that undid nothing
    assert twice.json()["detail"] == (
        f"nothing of sync #{job_id} could be undone: customer {second} "
        "(edited in the app since the import)"
    )
    assert app_city(runtime, second) == "Edited After Import"


def test_undo_says_why_it_left_a_record_a_later_import_changed_or_one_moved_away(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    client, alice, (reimported, moved) = import_cities(runtime, tokens, 2, 3)
    first = last_import(client, alice)
    edit_sheet_cell(runtime, 2, "City", "Imported Again")
    run_sync(runtime, "alice", FROM_SHEET)
    later = last_import(client, alice)
    with runtime.db.session() as session:
        bob = session.scalars(select(User).where(User.username == "bob")).one()
        customer = session.get(Customer, moved)
        assert customer is not None
        customer.agent_id = bob.id

    undone = client.post(f"/api/insurance/sync/jobs/{first}/undo", headers=alice)

    assert undone.status_code == 409
    assert undone.json()["detail"] == (
        f"nothing of sync #{first} could be undone: customer {reimported} "
        f"(changed since by the import of sync #{later}; undo that one first), "
        f"customer {moved} (moved to another agent's book since the import)"
    )
    assert app_city(runtime, reimported) == "Imported Again"


def test_an_import_tells_how_many_of_its_records_an_undo_can_still_take_back(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    client, alice, _ = import_cities(runtime, tokens, 2, 3)

    def undoable() -> list[object]:
        recent = client.get("/api/insurance/sync/status", headers=alice).json()
        return [job["undoable"] for job in recent["recent"]]

    before = undoable()
    job_id = last_import(client, alice)
    client.post(f"/api/insurance/sync/jobs/{job_id}/undo", headers=alice)

    assert before == [2, None]  # the import, then the sync to the sheet
    assert undoable() == [0, None]
    assert (
        client.get(f"/api/insurance/sync/jobs/{job_id}", headers=alice).json()[
            "undoable"
        ]
        == 0
    )


def policy_premium_conflict(
    runtime: Runtime, token: str
) -> tuple[TestClient, int, int]:
    """A premium changed to 200 in alice's sheet and to 300 in the app;
    returns a client, the policy's ID and the conflict's."""
    run_sync(runtime, "alice", TO_SHEET)
    path = workbook_path(runtime, "alice")
    book = load_workbook(path)
    sheet = book["Policies"]
    sheet.cell(2, columns(sheet)["Premium"]).value = Decimal("200.00")
    record_id = int(sheet.cell(2, 1).value)
    book.save(path)
    with runtime.db.session() as session:
        policy = session.get(Policy, record_id)
        assert policy is not None
        policy.premium = Decimal("300.00")
    run_sync(runtime, "alice", FROM_SHEET)
    client = TestClient(create_app(runtime, workers=False))
    (conflict_id,) = open_conflict_ids(client, token)
    return client, record_id, conflict_id


def app_premium(runtime: Runtime, record_id: int) -> Decimal:
    with runtime.db.read_session() as session:
        policy = session.get(Policy, record_id)
        assert policy is not None
        return policy.premium


@pytest.mark.parametrize(
    "value", ["1,50", "1,000", "(-5)", "\u0661\u0662\u0663", "1e3"]
)
def test_an_edited_premium_is_checked_as_the_record_api_checks_it(
    runtime: Runtime, tokens: dict[str, str], value: str
) -> None:
    client, record_id, conflict_id = policy_premium_conflict(runtime, tokens["alice"])

    answer = resolve(
        client, tokens["alice"], conflict_id, {"choice": "edit", "value": value}
    )

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "value"
    assert "write a premium" in answer.json()["detail"][0]["msg"]
    assert open_conflict_ids(client, tokens["alice"]) == [conflict_id]
    assert app_premium(runtime, record_id) == Decimal("300.00")


@pytest.mark.parametrize("body", [b'"1.50"', b"1.50"], ids=["text", "json-number"])
def test_an_edited_premium_written_as_the_record_api_takes_it_is_kept(
    runtime: Runtime, tokens: dict[str, str], body: bytes
) -> None:
    client, record_id, conflict_id = policy_premium_conflict(runtime, tokens["alice"])

    answer = client.post(
        f"/api/insurance/sync/conflicts/{conflict_id}/resolve",
        content=b'{"choice": "edit", "value": ' + body + b"}",
        headers={**bearer(tokens["alice"]), "content-type": "application/json"},
    )

    assert answer.status_code == 200
    assert app_premium(runtime, record_id) == Decimal("1.50")
    run_sync(runtime, "alice", TO_SHEET)
    sheet = load_workbook(workbook_path(runtime, "alice"))["Policies"]
    assert sheet.cell(2, columns(sheet)["Premium"]).value == 1.5


def test_an_edited_date_must_be_written_yyyy_mm_dd_as_the_record_api_takes_it(
    runtime: Runtime, tokens: dict[str, str]
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    record_id = edit_sheet_cell(runtime, 2, "Date of Birth", date(1980, 1, 2))
    with runtime.db.session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None
        customer.date_of_birth = date(1981, 1, 2)
    run_sync(runtime, "alice", FROM_SHEET)
    client = TestClient(create_app(runtime, workers=False))
    (conflict_id,) = open_conflict_ids(client, tokens["alice"])

    refused = resolve(
        client, tokens["alice"], conflict_id, {"choice": "edit", "value": "03/04/1982"}
    )
    kept = resolve(
        client, tokens["alice"], conflict_id, {"choice": "edit", "value": "1982-03-04"}
    )

    assert refused.status_code == 422
    assert "YYYY-MM-DD" in refused.json()["detail"][0]["msg"]
    assert kept.status_code == 200
    with runtime.db.read_session() as session:
        customer = session.get(Customer, record_id)
        assert customer is not None and customer.date_of_birth == date(1982, 3, 4)
