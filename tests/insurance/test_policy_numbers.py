"""Policy numbers moved between policies in the sheet: swapped, passed along
a chain, or moved where one row cannot take its new number."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from sheetbridge.insurance import review
from sheetbridge.insurance.models import Policy, User
from sheetbridge.insurance.services import Book
from sheetbridge.insurance.sync_jobs import FROM_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.web.deps import Runtime

from .test_workbook_sync import alices_tab, errors_of, run_sync, synced

__all__ = ["synced"]  # the fixture, used by name


def numbers(runtime: Runtime) -> dict[int, str]:
    with runtime.db.read_session() as session:
        return dict(session.execute(select(Policy.id, Policy.policy_number)).all())


def renumber(runtime: Runtime, new: dict[int, str]) -> dict[int, int]:
    """Type ``new`` numbers into the Policies tab, by policy ID; the rows."""
    rows: dict[int, int] = {}
    with alices_tab(runtime, "Policies") as (policies, header):
        for row in range(2, policies.max_row + 1):
            record_id = policies.cell(row, header["ID"]).value
            if record_id in new:
                policies.cell(row, header["Policy Number"]).value = new[record_id]
                rows[record_id] = row
    return rows


def alices_policies(runtime: Runtime, count: int) -> list[int]:
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        ids = session.scalars(
            select(Policy.id).where(Policy.agent_id == alice.id).order_by(Policy.id)
        ).all()
    return list(ids[:count])


def test_two_policies_swapping_numbers_in_the_sheet_swap_in_one_import(
    synced: Runtime,
) -> None:
    first, second = alices_policies(synced, 2)
    before = numbers(synced)
    renumber(synced, {first: before[second], second: before[first]})

    imported = run_sync(synced, "alice", FROM_SHEET)

    assert errors_of(imported, "Policies") == []
    assert imported["tabs"]["Policies"]["counts"]["updated"] == 2
    after = numbers(synced)
    assert (after[first], after[second]) == (before[second], before[first])
    assert run_sync(synced, "alice", FROM_SHEET)["summary"]["issues"] == 0


def test_numbers_passed_along_a_chain_move_in_one_import_whatever_the_row_order(
    synced: Runtime,
) -> None:
    first, second, third = alices_policies(synced, 3)
    before = numbers(synced)
    # The first row takes the second's number, the second the third's, and
    # the third a new one: the rows above wait for numbers freed below.
    renumber(synced, {first: before[second], second: before[third], third: "NEW-7"})

    imported = run_sync(synced, "alice", FROM_SHEET)

    assert errors_of(imported, "Policies") == []
    after = numbers(synced)
    assert [after[first], after[second], after[third]] == [
        before[second],
        before[third],
        "NEW-7",
    ]


def test_a_swap_that_one_row_cannot_make_changes_neither_and_says_why(
    synced: Runtime,
) -> None:
    first, second, third = alices_policies(synced, 3)
    before = numbers(synced)
    # A three-way move, but the third row wants a number another policy,
    # outside the move, keeps.
    (outside,) = [n for i, n in before.items() if i not in (first, second, third)][:1]
    rows = renumber(
        synced, {first: before[second], second: before[third], third: outside}
    )

    imported = run_sync(synced, "alice", FROM_SHEET)

    assert numbers(synced) == before, "nothing half moved"
    told = {issue["row"]: issue["reason"] for issue in errors_of(imported, "Policies")}
    assert f"{outside!r} is already used" in told[rows[third]]
    assert "gives it up" not in told[rows[third]], "held by a policy not moving"
    # The others' numbers are taken only because the third row was not
    # imported, and they say so, naming its row.
    assert f"{before[third]!r} is already used" in told[rows[second]]
    assert (
        f"whose row (row {rows[third]}) gives it up in the sheet"
        in (told[rows[second]])
    )
    assert f"{before[second]!r} is already used" in told[rows[first]]
    assert f"whose row (row {rows[second]}) gives it up" in told[rows[first]]


def test_undoing_an_import_that_swapped_numbers_swaps_them_back(
    synced: Runtime,
) -> None:
    first, second = alices_policies(synced, 2)
    before = numbers(synced)
    renumber(synced, {first: before[second], second: before[first]})
    job_id = import_job(synced)

    with synced.db.session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
        undone = review.undo_import(session, alice, job_id)

    assert undone.left_alone == []
    assert sorted(entry["record_id"] for entry in undone.restored) == [first, second]
    assert numbers(synced) == before


def import_job(runtime: Runtime) -> int:
    """Run an import of alice's book; its job's ID."""
    with runtime.db.read_session() as session:
        alice = session.scalars(select(User).where(User.username == "alice")).one()
    queued = runtime.sync.enqueue(alice, FROM_SHEET)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()
    assert runtime.queue.get(queued.job_id).state == "succeeded"
    return queued.job_id


def copy_of_row_2(policies: Any, header: dict[str, int], row: int, number: str) -> None:
    """A new row typed into the Policies tab: row 2's values, without an ID,
    with ``number``."""
    for column in header:
        if column != "ID":
            policies.cell(row, header[column]).value = policies.cell(
                2, header[column]
            ).value
    policies.cell(row, header["Policy Number"]).value = number


@pytest.mark.parametrize(
    ("number", "typed"), [("AB-100", "ab-100"), ("Café-77", "Cafe\u0301-77")]
)
def test_a_new_row_with_a_policys_number_in_other_case_or_form_is_refused(
    synced: Runtime, number: str, typed: str
) -> None:
    (first,) = alices_policies(synced, 1)
    renumber(synced, {first: number})
    run_sync(synced, "alice", FROM_SHEET)
    with alices_tab(synced, "Policies") as (policies, header):
        new = policies.max_row + 1
        copy_of_row_2(policies, header, new, typed)

    imported = run_sync(synced, "alice", FROM_SHEET)

    (error,) = errors_of(imported, "Policies")
    assert (error["row"], error["column"]) == (new, "Policy Number")
    assert (
        f"'{typed}' is already used by policy {first}, written '{number}'"
        in (error["reason"])
    )
    assert sorted(numbers(synced).values()).count(number) == 1
    assert typed not in numbers(synced).values()


def test_two_new_rows_giving_one_number_in_two_cases_are_both_refused(
    synced: Runtime,
) -> None:
    with alices_tab(synced, "Policies") as (policies, header):
        rows = (policies.max_row + 1, policies.max_row + 2)
        for new, number in zip(rows, ("zz-1", "ZZ-1"), strict=True):
            copy_of_row_2(policies, header, new, number)

    imported = run_sync(synced, "alice", FROM_SHEET)

    told = {i["row"]: i["reason"] for i in errors_of(imported, "Policies")}
    assert f"zz-1 is already used by row {rows[1]}" in told[rows[0]]
    assert f"ZZ-1 is already used by row {rows[0]}" in told[rows[1]]
    assert imported["tabs"]["Policies"]["counts"]["created"] == 0


def test_two_books_checking_the_same_numbers_in_opposite_orders_both_finish(
    runtime: Runtime,
) -> None:
    # As two imports whose new rows give the same numbers, listed the other
    # way round: each locks them all first, in one order, so neither waits
    # for the other forever (PostgreSQL would end one as a deadlock).
    with runtime.db.read_session() as session:
        users = session.scalars(
            select(User).where(User.username.in_(["alice", "bob"]))
        ).all()
    orders = {"alice": ["LOCK-A", "LOCK-B"], "bob": ["LOCK-B", "LOCK-A"]}
    barrier = threading.Barrier(2, timeout=20)

    def check(user: User) -> None:
        with runtime.db.session() as session:
            book = Book(session, user)
            book.lock_numbers(orders[user.username])
            for number in orders[user.username]:
                book._check_policy_number(number, None)
                if number == orders[user.username][0]:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        barrier.wait(timeout=1)  # the other has begun too

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(check, users))
