"""The JSON API: auth, scoping, optimistic concurrency, validation."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from sheetbridge import clock
from sheetbridge.insurance.mapping import CUSTOMERS
from sheetbridge.insurance.models import User
from sheetbridge.insurance.services import Book
from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.queue.models import Job
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sync.columns import CellError, parse_cell
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer
from tests.insurance.test_workbook_sync import alices_tab, run_sync


def _first_policy(client: TestClient) -> dict[str, object]:
    page = client.get("/api/policies", params={"limit": 1}).json()
    return page["items"][0]  # type: ignore[no-any-return]


def _save_policy(
    client: TestClient, policy: dict[str, object], **changes: object
) -> Response:
    """PATCH ``changes`` onto ``policy``, based on the version it was read at."""
    return client.patch(
        f"/api/policies/{policy['id']}", json={"version": policy["version"], **changes}
    )


def test_every_api_endpoint_needs_auth_but_health_does_not(client: TestClient) -> None:
    assert client.get("/api/customers").status_code == 401
    assert client.post("/api/insurance/sync/to-sheet").status_code == 401
    assert client.get("/api/insurance/sync/status").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_metrics_are_for_admins(client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/metrics", headers=bearer(tokens["alice"])).status_code == 403
    metrics = client.get("/metrics", headers=bearer(tokens["admin"]))
    assert metrics.status_code == 200 and "python_info" in metrics.text


def test_wrong_token_is_rejected(client: TestClient) -> None:
    response = client.get("/api/customers", headers=bearer("sb_nope"))
    assert response.status_code == 401


def test_agent_sees_only_their_book_and_admin_sees_all(
    client: TestClient, tokens: dict[str, str]
) -> None:
    everyone = client.get("/api/customers", headers=bearer(tokens["admin"])).json()
    alices = client.get("/api/customers", headers=bearer(tokens["alice"])).json()
    assert everyone["total"] == 30
    assert 0 < alices["total"] < 30
    assert {c["agent"] for c in alices["items"]} == {"alice"}
    bobs_customer = next(
        c
        for c in client.get(
            "/api/customers", headers=bearer(tokens["bob"]), params={"limit": 1}
        ).json()["items"]
    )
    hidden = client.get(
        f"/api/customers/{bobs_customer['id']}", headers=bearer(tokens["alice"])
    )
    assert hidden.status_code == 404


def test_a_saved_change_of_agent_or_customer_answers_with_the_new_names(
    client: TestClient, tokens: dict[str, str], runtime: Runtime
) -> None:
    admin = bearer(tokens["admin"])
    customer, other = client.get(
        "/api/customers", headers=bearer(tokens["alice"]), params={"limit": 2}
    ).json()["items"]
    (policy,) = client.get(
        "/api/policies",
        headers=bearer(tokens["alice"]),
        params={"customer_id": customer["id"], "limit": 1},
    ).json()["items"]

    moved = client.patch(
        f"/api/customers/{customer['id']}",
        json={"version": customer["version"], "agent_id": _user_id(runtime, "bob")},
        headers=admin,
    )
    # The customer's move took the policy along: a new version.
    policy = client.get(f"/api/policies/{policy['id']}", headers=admin).json()
    reassigned = client.patch(
        f"/api/policies/{policy['id']}",
        json={
            "version": policy["version"],
            "customer_id": other["id"],
            "agent_id": _user_id(runtime, "carol"),
        },
        headers=admin,
    )

    assert moved.status_code == 200 and reassigned.status_code == 200
    assert moved.json()["agent"] == "bob"
    assert (reassigned.json()["agent"], reassigned.json()["customer"]) == (
        "carol",
        other["name"],
    )
    for path, answer in (
        (f"/api/customers/{customer['id']}", moved),
        (f"/api/policies/{policy['id']}", reassigned),
    ):
        assert client.get(path, headers=admin).json() == answer.json()


def test_a_customer_moved_to_another_agent_takes_along_the_policies_of_the_old_one(
    client: TestClient, tokens: dict[str, str], runtime: Runtime
) -> None:
    admin, alice, bob = (bearer(tokens[name]) for name in ("admin", "alice", "bob"))
    customer = next(
        c
        for c in client.get("/api/customers", headers=alice).json()["items"]
        if client.get(
            "/api/policies", headers=alice, params={"customer_id": c["id"]}
        ).json()["total"]
        >= 2
    )
    theirs = client.get(
        "/api/policies", headers=alice, params={"customer_id": customer["id"]}
    ).json()["items"]
    kept = theirs[0]  # written by another agent: stays with that agent
    assert (
        client.patch(
            f"/api/policies/{kept['id']}",
            json={"version": kept["version"], "agent_id": _user_id(runtime, "carol")},
            headers=admin,
        ).status_code
        == 200
    )

    moved = client.patch(
        f"/api/customers/{customer['id']}",
        json={"version": customer["version"], "agent_id": _user_id(runtime, "bob")},
        headers=admin,
    )

    assert moved.status_code == 200
    mine = {"customer_id": customer["id"]}
    bobs = client.get("/api/policies", headers=bob, params=mine).json()["items"]
    assert {p["id"] for p in bobs} == {p["id"] for p in theirs[1:]}
    assert all(p["agent"] == "bob" for p in bobs)
    assert client.get("/api/policies", headers=alice, params=mine).json()["total"] == 0
    everyone = client.get("/api/policies", headers=admin, params=mine).json()
    assert {p["agent"] for p in everyone["items"]} == {"bob", "carol"}


def _user_id(runtime: Runtime, username: str) -> int:
    with runtime.db.read_session() as session:
        return session.scalars(select(User.id).where(User.username == username)).one()


def test_search_filter_and_paging(alice: TestClient) -> None:
    page = alice.get("/api/policies", params={"limit": 5, "offset": 0}).json()
    assert len(page["items"]) == 5 and page["total"] > 5
    number = page["items"][0]["policy_number"]
    found = alice.get("/api/policies", params={"q": number}).json()
    assert [p["policy_number"] for p in found["items"]] == [number]
    active = alice.get("/api/policies", params={"status": "active"}).json()
    assert all(p["status"] == "active" for p in active["items"])


def test_premium_is_exact_decimal_text(alice: TestClient) -> None:
    policy = _first_policy(alice)
    response = alice.patch(
        f"/api/policies/{policy['id']}",
        json={"version": policy["version"], "premium": "1234.10"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["premium"] == "1234.10"
    assert re.fullmatch(r"\d+\.\d\d", response.json()["premium"])


def test_update_with_a_stale_version_answers_409_with_the_current_record(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    first = _save_policy(alice, policy, carrier="Harbor Mutual")
    assert first.status_code == 200
    stale = _save_policy(alice, policy, carrier="Lost Edit Insurance")
    assert stale.status_code == 409
    assert stale.json()["current"]["carrier"] == "Harbor Mutual"
    assert stale.json()["current"]["version"] == policy["version"] + 1  # type: ignore[operator]


def test_saving_a_record_unchanged_keeps_its_version_so_other_editors_are_not_refused(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    customer = alice.get(f"/api/customers/{policy['customer_id']}").json()
    fields = ("carrier", "status", "effective_date", "expiration_date")
    same_policy = {name: policy[name] for name in fields}
    same_customer = {k: customer[k] for k in ("name", "email", "phone", "notes")}

    # the same amount written differently is the same premium
    saved_policy = _save_policy(
        alice, policy, **same_policy, premium=f"{policy['premium']}0"
    )
    saved_customer = alice.patch(
        f"/api/customers/{customer['id']}",
        json={"version": customer["version"], **same_customer},
    )

    assert saved_policy.status_code == 200, saved_policy.text
    assert saved_policy.json() == policy
    assert saved_customer.status_code == 200, saved_customer.text
    assert saved_customer.json() == customer


def test_updated_at_is_the_same_utc_instant_whether_read_back_or_just_saved(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    saved = _save_policy(alice, policy, carrier="Harbor Mutual").json()
    read_back = alice.get(f"/api/policies/{policy['id']}").json()
    listed = alice.get("/api/policies", params={"q": policy["policy_number"]}).json()

    assert saved["updated_at"].endswith("Z"), saved["updated_at"]
    assert read_back["updated_at"] == saved["updated_at"]
    assert listed["items"][0]["updated_at"] == saved["updated_at"]


def test_invalid_input_answers_422_naming_each_field(alice: TestClient) -> None:
    response = alice.post(
        "/api/customers",
        json={"name": "", "email": "not-an-email", "zip_code": "12", "state": "Maine"},
    )
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["detail"]}
    assert {"name", "email", "zip_code", "state"} <= fields


def test_policy_dates_and_unknown_customer_are_rejected_by_field(
    alice: TestClient,
) -> None:
    customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]
    body = {
        "policy_number": "00999",
        "customer_id": customer["id"],
        "carrier": "Harbor Mutual",
        "line_of_business": "auto",
        "effective_date": "2026-05-01",
        "expiration_date": "2026-01-01",
        "premium": "100.00",
    }
    backwards = alice.post("/api/policies", json=body)
    assert backwards.status_code == 422
    (error,) = backwards.json()["detail"]
    assert error["field"] == "expiration_date"
    assert "before the effective date" in error["msg"]
    unknown = alice.post(
        "/api/policies",
        json={**body, "expiration_date": "2027-05-01", "customer_id": 999999},
    )
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "customer_id"]
    created = alice.post(
        "/api/policies", json={**body, "expiration_date": "2027-05-01"}
    )
    assert created.status_code == 201
    assert created.json()["policy_number"] == "00999"
    duplicate = alice.post(
        "/api/policies", json={**body, "expiration_date": "2027-05-01"}
    )
    assert duplicate.status_code == 422
    assert duplicate.json()["detail"][0]["field"] == "policy_number"
    assert duplicate.json()["detail"][0]["msg"] == (
        f"'00999' is already used by policy {created.json()['id']}"
    )


def test_a_policy_number_differing_only_in_case_from_one_in_use_is_refused(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    renamed = _save_policy(alice, policy, policy_number="Ab-100")
    assert renamed.status_code == 200, renamed.text
    other = alice.get("/api/policies", params={"limit": 2}).json()["items"][1]

    taken = _save_policy(alice, other, policy_number="aB-100")
    recased = _save_policy(alice, renamed.json(), policy_number="AB-100")

    assert taken.status_code == 422
    assert [(e["field"], e["msg"]) for e in taken.json()["detail"]] == [
        (
            "policy_number",
            f"'aB-100' is already used by policy {policy['id']}, written 'Ab-100'",
        )
    ]
    assert recased.status_code == 200, "a policy may change the case of its own"
    assert recased.json()["policy_number"] == "AB-100"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("É-100", "é-100"),
        ("ПОЛ-1", "пол-1"),
        ("STRASSE-1", "straße-1"),
        # One look, other characters: an accent typed apart from its letter,
        # an invisible zero-width space or soft hyphen, full-width letters.
        ("Müller-9", "Mu\u0308ller-9"),
        ("Müller-9", "MÜLLER\u200b-9"),
        ("AB-100", "AB\u00ad-100"),
        ("AB-100", "\uff21\uff22\uff0d\uff11\uff10\uff10"),
        # Dashes of any kind, an emoji's variation selector.
        ("AB-100", "AB\u2011100"),
        ("AB-100", "AB\u2013100"),
        ("AB-100", "AB\u2212100"),
        ("AB-100", "AB-100\ufe0f"),
    ],
)
def test_policy_numbers_are_told_apart_in_no_case_in_any_alphabet_or_form(
    alice: TestClient, first: str, second: str
) -> None:
    policy, other = alice.get("/api/policies", params={"limit": 2}).json()["items"]
    assert _save_policy(alice, policy, policy_number=first).status_code == 200

    taken = _save_policy(alice, other, policy_number=second)
    found = alice.get("/api/policies", params={"q": second}).json()["items"]

    assert taken.status_code == 422
    assert (
        f"is already used by policy {policy['id']}"
        in (taken.json()["detail"][0]["msg"])
    )
    assert [item["id"] for item in found] == [policy["id"]], "search finds it too"


def test_a_look_alike_policy_number_is_refused_naming_the_characters_that_differ(
    alice: TestClient,
) -> None:
    policy, other = alice.get("/api/policies", params={"limit": 2}).json()["items"]
    assert _save_policy(alice, policy, policy_number="ÁB-1").status_code == 200

    taken = _save_policy(alice, other, policy_number="A\u0301B-1")

    assert taken.status_code == 422
    assert taken.json()["detail"][0]["msg"] == (
        f"'A\u0301B-1' is already used by policy {policy['id']}, written 'ÁB-1' "
        "(yours holds U+0301 COMBINING ACUTE ACCENT, a character that looks like "
        "part of another)"
    )


def test_another_agents_customer_is_told_as_not_in_your_book(
    client: TestClient, tokens: dict[str, str]
) -> None:
    bobs = client.get(
        "/api/customers", params={"limit": 1}, headers=bearer(tokens["bob"])
    ).json()["items"][0]
    body = {
        "policy_number": "00998",
        "customer_id": bobs["id"],
        "carrier": "Harbor Mutual",
        "line_of_business": "auto",
        "effective_date": "2026-05-01",
        "expiration_date": "2027-05-01",
        "premium": "100.00",
    }

    answer = client.post("/api/policies", json=body, headers=bearer(tokens["alice"]))

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == (
        f"there is no customer {bobs['id']} in your book"
    )


def test_a_policy_number_another_agent_uses_is_refused_without_naming_their_policy(
    client: TestClient, tokens: dict[str, str]
) -> None:
    alices = client.get(
        "/api/policies", params={"limit": 1}, headers=bearer(tokens["alice"])
    ).json()["items"][0]
    bobs = client.get(
        "/api/policies", params={"limit": 1}, headers=bearer(tokens["bob"])
    ).json()["items"][0]

    answer = client.patch(
        f"/api/policies/{bobs['id']}",
        json={"version": bobs["version"], "policy_number": alices["policy_number"]},
        headers=bearer(tokens["bob"]),
    )

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == (
        f"{alices['policy_number']!r} is already used"
    )


def test_a_premium_out_of_bounds_is_refused_in_the_agencys_words(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    messages = {
        premium: _save_policy(alice, policy, premium=premium).json()["detail"][0]["msg"]
        for premium in ("-5", "12.345", "12345678901.00")
    }

    assert messages == {
        "-5": "a premium cannot be negative",
        "12.345": "a premium has at most 2 decimal places (cents)",
        "12345678901.00": "a premium is at most 9999999999.99",
    }


def test_a_premium_sent_as_text_is_written_as_an_amount_is(alice: TestClient) -> None:
    policy = _first_policy(alice)
    refused = {
        premium: _save_policy(alice, policy, premium=premium).json()["detail"][0]["msg"]
        for premium in ("1e5", "NaN", "Infinity", "0x10", "1_000")
    }
    saved = [
        _save_policy(alice, _first_policy(alice), premium=premium).json()["premium"]
        for premium in ("1234.5", ".50", " 12 ")
    ]

    assert refused == dict.fromkeys(
        ("1e5", "NaN", "Infinity", "0x10", "1_000"),
        "write a premium as an amount like 1234.50",
    )
    assert saved == ["1234.50", "0.50", "12.00"]


def test_a_premium_as_text_takes_one_sign_and_a_point_before_after_or_between_digits(
    alice: TestClient,
) -> None:
    saved = [
        _save_policy(alice, _first_policy(alice), premium=premium).json()["premium"]
        for premium in ("+12", "12.", ".5", "0012.50")
    ]

    assert saved == ["12.00", "12.00", "0.50", "12.50"]


def test_a_premium_as_text_with_commas_is_refused_naming_the_point_for_cents(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    refused = {
        premium: _save_policy(alice, policy, premium=premium).json()["detail"][0]["msg"]
        for premium in ("1,50", "1,000", "1 000")
    }

    assert refused == {
        "1,50": "write a premium with a point for cents and no commas, like 1234.50",
        "1,000": "write a premium with a point for cents and no commas, like 1234.50",
        "1 000": "write a premium as an amount like 1234.50",
    }


def test_a_premium_as_text_with_two_signs_or_a_dollar_sign_is_refused(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    for premium in ("--5", "+-5", "-+5", "(5)", "$12", "- 5"):
        answer = _save_policy(alice, policy, premium=premium)
        assert answer.status_code == 422, premium
        assert answer.json()["detail"][0]["msg"] == (
            "write a premium as an amount like 1234.50"
        )


def test_a_premium_as_text_with_digits_other_than_0_to_9_is_refused(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    for premium in ("\u0661\u0662\u0663", "\uff11\uff12\uff13", "1\u0662.50"):
        answer = _save_policy(alice, policy, premium=premium)
        assert answer.status_code == 422, premium
        assert answer.json()["detail"][0]["msg"] == (
            "write a premium with the digits 0-9, like 1234.50"
        )
    assert _first_policy(alice)["premium"] == policy["premium"]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("1e-400", "a premium has at most 2 decimal places (cents)"),
        ("0.001", "a premium has at most 2 decimal places (cents)"),
        ("100.0000000000000000001", "a premium has at most 2 decimal places (cents)"),
        ("1e400", "a premium is at most 9999999999.99"),
    ],
)
def test_a_premium_sent_as_a_json_number_is_checked_as_written(
    alice: TestClient, written: str, message: str
) -> None:
    # Not as the float it rounds to: 1e-400 is 0.0 as a float, 1e400 infinity.
    policy = _first_policy(alice)
    body = f'{{"version": {policy["version"]}, "premium": {written}}}'

    answer = alice.patch(
        f"/api/policies/{policy['id']}",
        content=body,
        headers={"content-type": "application/json"},
    )

    assert answer.status_code == 422, answer.text
    assert [(e["field"], e["msg"]) for e in answer.json()["detail"]] == [
        ("premium", message)
    ]
    assert _first_policy(alice) == policy


def test_a_premium_sent_as_a_json_number_of_cents_is_kept_exactly(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    body = f'{{"version": {policy["version"]}, "premium": 1.2345e3}}'

    answer = alice.patch(
        f"/api/policies/{policy['id']}",
        content=body,
        headers={"content-type": "application/json"},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["premium"] == "1234.50"


def test_text_is_saved_without_surrounding_spaces_as_the_sheet_shows_it(
    alice: TestClient,
) -> None:
    created = alice.post(
        "/api/customers",
        json={"name": " Ann Lee ", "city": " Portland ", "notes": "  call back\n "},
    )

    assert created.status_code == 201, created.text
    saved = created.json()
    assert (saved["name"], saved["city"], saved["notes"]) == (
        "Ann Lee",
        "Portland",
        "call back",
    )


def test_null_clears_an_optional_text_field_but_not_a_required_one(
    alice: TestClient,
) -> None:
    customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]
    cleared = alice.patch(
        f"/api/customers/{customer['id']}",
        json={"version": customer["version"], "state": None, "notes": None},
    )
    created = alice.post("/api/customers", json={"name": "Ann Lee", "email": None})
    nameless = alice.post("/api/customers", json={"name": None})

    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["state"], cleared.json()["notes"]) == ("", "")
    assert created.status_code == 201, created.text
    assert created.json()["email"] == ""
    assert nameless.status_code == 422
    assert nameless.json()["detail"][0]["field"] == "name"


def test_customer_with_policies_cannot_be_deleted_but_an_empty_one_can(
    alice: TestClient,
) -> None:
    policy = _first_policy(alice)
    refused = alice.delete(f"/api/customers/{policy['customer_id']}")
    assert refused.status_code == 409
    created = alice.post("/api/customers", json={"name": "Temp Person"}).json()
    assert alice.delete(f"/api/customers/{created['id']}").status_code == 204
    assert alice.get(f"/api/customers/{created['id']}").status_code == 404


@pytest.mark.parametrize("path", ["/api/policies/{id}", "/api/customers/{id}"])
def test_a_delete_with_a_body_is_refused_as_the_version_goes_in_its_query(
    alice: TestClient, path: str
) -> None:
    created = alice.post("/api/customers", json={"name": "Temp Person"}).json()
    record = _first_policy(alice) if "policies" in path else created
    url = path.format(id=record["id"])

    refused = alice.request("DELETE", url, json={"version": 999})

    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "version"]
    assert "send version in the query, ?version=" in error["msg"]
    assert alice.get(url).status_code == 200
    deleted = alice.delete(url, params={"version": record["version"]})
    assert deleted.status_code == 204


def test_refusing_to_delete_a_customer_counts_its_policies_in_plain_words(
    alice: TestClient,
) -> None:
    customer = alice.post("/api/customers", json={"name": "One Policy"}).json()
    policy = {
        "customer_id": customer["id"],
        "carrier": "Harbor Mutual",
        "line_of_business": "auto",
        "effective_date": "2026-01-01",
        "expiration_date": "2027-01-01",
        "premium": "100.00",
    }
    alice.post("/api/policies", json={**policy, "policy_number": "ONE-1"})
    one = alice.delete(f"/api/customers/{customer['id']}")
    alice.post("/api/policies", json={**policy, "policy_number": "ONE-2"})
    two = alice.delete(f"/api/customers/{customer['id']}")

    assert one.json()["detail"].endswith("still has 1 policy; delete or move it first")
    assert two.json()["detail"].endswith(
        "still has 2 policies; delete or move them first"
    )


def test_an_unknown_user_is_refused_in_the_same_words_as_a_wrong_password(
    client: TestClient,
) -> None:
    answers = []
    for username, password in (("alice", "wrong-password"), ("nobody", "whatever1")):
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answers.append(
            client.post(
                "/login",
                data={"username": username, "password": password, "csrf": csrf[1]},
            )
        )

    assert [answer.status_code for answer in answers] == [400, 400]
    wrong, unknown = (re.sub(r'value="[^"]*"', "", a.text) for a in answers)
    assert unknown.replace("nobody", "alice") == wrong
    assert client.get("/api/customers").status_code == 401


def test_the_pages_link_an_icon_and_the_old_icon_address_leads_to_it(
    client: TestClient,
) -> None:
    page = client.get("/login")
    linked = re.search(r'<link rel="icon" href="([^"]+)"', page.text)
    assert linked is not None

    icon = client.get(linked[1])
    asked = client.get("/favicon.ico")

    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.lstrip().startswith("<svg")
    assert asked.status_code == 200 and asked.url.path == linked[1]


def test_an_overlong_or_missing_sign_in_field_shows_the_sign_in_page_again(
    client: TestClient,
) -> None:
    answers = []
    for form in (
        {"username": "alice", "password": "p" * 300},
        {"username": "a" * 100, "password": "whatever1"},
        {"username": "alice"},
    ):
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answers.append(client.post("/login", data={**form, "csrf": csrf[1]}))

    assert [answer.status_code for answer in answers] == [400, 400, 400]
    for answer in answers:
        assert answer.headers["content-type"].startswith("text/html")
        assert "Wrong username or password." in answer.text


def test_a_sign_in_body_no_form_sends_shows_the_sign_in_page_again(
    client: TestClient,
) -> None:
    client.get("/login")
    many = "&".join(f"f{i}=x" for i in range(1_500))
    bodies = [
        ({"Content-Type": "multipart/form-data"}, b"--x--"),  # no boundary
        ({"Content-Type": "application/x-www-form-urlencoded"}, many.encode()),
        (
            {"Content-Type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n'
            + b"p" * 1_100_000
            + b"\r\n--b--\r\n",
        ),
    ]

    answers = [client.post("/login", headers=h, content=body) for h, body in bodies]

    assert [answer.status_code for answer in answers] == [400, 400, 400]
    assert all("text/html" in a.headers["content-type"] for a in answers)


def _post_endlessly(client: TestClient, path: str, chunks: int) -> tuple[int, int]:
    """POST a form body of ``chunks`` 64 KB chunks, one field that never ends,
    straight to the app; the answer's status and how many bytes the app took."""
    chunk = b"p" * 65_536
    sent = 0
    status = 0

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent >= chunks * len(chunk):
            return {"type": "http.disconnect"}
        sent += len(chunk)
        body = (b"password=" + chunk) if sent == len(chunk) else chunk
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[call-overload]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr, arg-type]
    return status, sent


@pytest.mark.parametrize("path", ["/login", "/logout"])
def test_a_page_form_body_far_larger_than_its_form_is_refused_without_reading_it_all(
    client: TestClient, path: str
) -> None:
    status, taken = _post_endlessly(client, path, chunks=1_000)  # 64 MB

    assert status in (400, 303)
    assert taken <= 128 * 1024


def test_a_sign_in_with_a_csrf_token_that_is_not_ascii_is_refused_not_a_500(
    client: TestClient,
) -> None:
    client.get("/login")
    answer = client.post(
        "/login", data={"username": "alice", "password": "x" * 8, "csrf": "é"}
    )

    assert answer.status_code == 400
    assert "form expired" in answer.text


def test_browser_session_needs_csrf_token_for_changes(client: TestClient) -> None:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    bad = client.post(
        "/login",
        data={"username": "alice", "password": "wrong", "csrf": csrf.group(1)},
    )
    assert bad.status_code == 400
    token = re.search(r'name="csrf" value="([^"]+)"', bad.text)
    assert token is not None
    signed_in = client.post(
        "/login",
        data={"username": "alice", "password": "alice-demo", "csrf": token.group(1)},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/api/customers").status_code == 200
    assert client.post("/api/insurance/sync/to-sheet").status_code == 403
    dashboard = client.get("/")
    meta = re.search(r'name="csrf-token" content="([^"]+)"', dashboard.text)
    assert meta is not None
    queued = client.post(
        "/api/insurance/sync/to-sheet", headers={"X-CSRF-Token": meta.group(1)}
    )
    assert queued.status_code == 202


def test_sync_endpoints_queue_at_once_and_status_lists_the_jobs(
    alice: TestClient, runtime: Runtime
) -> None:
    answers = [alice.post("/api/insurance/sync/to-sheet") for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    bodies = [a.json() for a in answers]
    assert all(b["queued"] is True for b in bodies)
    assert [b["position"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["status_url"] == f"/api/insurance/sync/jobs/{bodies[0]['job_id']}"
    status = alice.get("/api/insurance/sync/status").json()
    assert [job["id"] for job in status["queued"]] == [b["job_id"] for b in bodies]
    assert (
        status["queued"][1]["waiting_for"]
        == f"your earlier sync #{bodies[0]['job_id']}"
    )
    one = alice.get(bodies[2]["status_url"]).json()
    assert one["state"] == "queued" and one["position"] == 3
    cancelled = alice.post(f"/api/insurance/sync/jobs/{bodies[2]['job_id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"


def test_the_status_counts_recent_jobs_issues_and_a_jobs_own_view_lists_them(
    alice: TestClient, runtime: Runtime
) -> None:
    run_sync(runtime, "alice", TO_SHEET)
    with alices_tab(runtime) as (sheet, _):
        gone = sorted(sheet.cell(row, 1).value for row in (2, 3, 4))
        sheet.delete_rows(2, 3)
    for _ in range(2):
        alice.post("/api/insurance/sync/to-sheet")
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    recent = alice.get("/api/insurance/sync/status").json()["recent"][:2]

    for job in recent:
        tab = job["result"]["tabs"]["Customers"]
        assert job["result"]["brief"] is True
        assert "issues" not in tab and "conflicts" not in tab
        assert (tab["issues_listed"], tab["conflicts_listed"]) == (3, 0)
        assert tab["counts"]["deleted_in_sheet"] == 3 and tab["write_back"] == gone
    full = alice.get(recent[0]["status_url"]).json()["result"]
    assert "brief" not in full
    issues = full["tabs"]["Customers"]["issues"]
    assert [issue["value"] for issue in issues] == [str(i) for i in gone]
    # A sync that ended before briefs were stored is briefed as it is read.
    with runtime.db.session() as session:
        session.execute(update(Job).values(result_brief=None))
    assert alice.get("/api/insurance/sync/status").json()["recent"][:2] == recent


def test_cancelling_a_finished_sync_is_a_409_saying_so_with_the_job(
    alice: TestClient,
) -> None:
    queued = alice.post("/api/insurance/sync/to-sheet").json()
    first = alice.post(f"/api/insurance/sync/jobs/{queued['job_id']}/cancel")

    again = alice.post(f"/api/insurance/sync/jobs/{queued['job_id']}/cancel")

    assert first.status_code == 200 and first.json()["state"] == "cancelled"
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"sync #{queued['job_id']} has already finished (cancelled); "
        "there is nothing to stop"
    )
    assert again.json()["job"]["id"] == queued["job_id"]
    assert again.json()["job"]["state"] == "cancelled"


def test_older_finished_syncs_are_listed_page_by_page_newest_first(
    client: TestClient, tokens: dict[str, str]
) -> None:
    alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])
    ids = []
    for _ in range(3):
        queued = client.post("/api/insurance/sync/to-sheet", headers=alice).json()
        client.post(
            f"/api/insurance/sync/jobs/{queued['job_id']}/cancel", headers=alice
        )
        ids.append(queued["job_id"])
    running = client.post("/api/insurance/sync/to-sheet", headers=alice).json()

    first = client.get("/api/insurance/sync/jobs", params={"limit": 2}, headers=alice)
    rest = client.get(
        "/api/insurance/sync/jobs",
        params={"before": ids[1], "limit": 2},
        headers=alice,
    )
    bobs = client.get("/api/insurance/sync/jobs", headers=bob)

    assert first.status_code == 200
    assert [job["id"] for job in first.json()["jobs"]] == [ids[2], ids[1]]
    assert first.json()["more"] is True
    assert [job["id"] for job in rest.json()["jobs"]] == [ids[0]]
    assert rest.json()["more"] is False
    assert running["job_id"] not in [job["id"] for job in first.json()["jobs"]]
    assert first.json()["jobs"][0]["result"] is None  # cancelled before it ran
    assert bobs.json() == {"jobs": [], "more": False}
    refused = client.get("/api/insurance/sync/jobs", params={"limit": 0}, headers=alice)
    assert refused.status_code == 422


def test_an_admin_lists_everyones_syncs_each_naming_whose_it_is(
    client: TestClient, tokens: dict[str, str]
) -> None:
    made = {}
    for name in ("alice", "bob"):
        who = bearer(tokens[name])
        queued = client.post("/api/insurance/sync/to-sheet", headers=who).json()
        client.post(f"/api/insurance/sync/jobs/{queued['job_id']}/cancel", headers=who)
        made[queued["job_id"]] = name
    waiting = client.post(
        "/api/insurance/sync/from-sheet", headers=bearer(tokens["bob"])
    )
    made[waiting.json()["job_id"]] = "bob"
    admin, alice = bearer(tokens["admin"]), bearer(tokens["alice"])
    everyone = {"all_users": "true"}

    status = client.get("/api/insurance/sync/status", params=everyone, headers=admin)
    older = client.get("/api/insurance/sync/jobs", params=everyone, headers=admin)
    own = client.get("/api/insurance/sync/status", headers=alice)

    listed = status.json()["queued"] + status.json()["recent"]
    assert {job["id"]: job["owner"] for job in listed} == made
    assert {job["id"]: job["owner"] for job in older.json()["jobs"]} == {
        job_id: name
        for job_id, name in made.items()
        if job_id != waiting.json()["job_id"]
    }
    assert [job["id"] for job in own.json()["recent"]] == [min(made)]
    assert "owner" not in own.json()["recent"][0]


@pytest.mark.parametrize("path", ["status", "jobs", "events"])
def test_anyone_but_an_admin_asking_for_everyones_syncs_is_refused_saying_why(
    client: TestClient, tokens: dict[str, str], path: str
) -> None:
    # Not their own instead: a script would take those for everyone's.
    answer = client.get(
        f"/api/insurance/sync/{path}",
        params={"all_users": "true"},
        headers=bearer(tokens["alice"]),
    )

    assert answer.status_code == 403
    assert answer.json()["detail"] == (
        "all_users: only admins see everyone's syncs; leave it out for your own"
    )


def test_job_times_are_utc_with_a_z_like_every_record_time(alice: TestClient) -> None:
    queued = alice.post("/api/insurance/sync/to-sheet").json()
    alice.post(f"/api/insurance/sync/jobs/{queued['job_id']}/cancel")
    job = alice.get(queued["status_url"]).json()

    for name in ("enqueued_at", "run_after", "finished_at"):
        assert job[name].endswith("Z"), (name, job[name])


def _write_back(client: TestClient, token: str, **body: object) -> Response:
    return client.post(
        "/api/insurance/sync/write-back", json=body, headers=bearer(token)
    )


def _customer_ids(client: TestClient, token: str) -> list[int]:
    page = client.get("/api/customers", headers=bearer(token)).json()
    return [customer["id"] for customer in page["items"]]


def test_write_back_queues_a_sync_to_the_sheet_of_the_callers_records(
    client: TestClient, tokens: dict[str, str], runtime: Runtime
) -> None:
    mine = _customer_ids(client, tokens["alice"])[:2]
    answer = _write_back(client, tokens["alice"], customers=mine)
    assert answer.status_code == 202 and answer.json()["queued"] is True
    job = runtime.queue.get(answer.json()["job_id"])
    assert job.kind == "to_sheet"
    assert job.payload["write_back"] == {"Customers": sorted(mine)}
    every = _write_back(client, tokens["alice"], all=True)
    assert every.status_code == 202
    assert runtime.queue.get(every.json()["job_id"]).payload["write_back"] == "all"


def test_write_back_of_records_some_of_which_left_the_book_queues_the_rest_naming_them(
    client: TestClient, tokens: dict[str, str], runtime: Runtime
) -> None:
    auth = bearer(tokens["alice"])
    made = [
        client.post("/api/customers", json={"name": name}, headers=auth).json()
        for name in ("Ann", "Ben", "Cy")
    ]
    mine = [customer["id"] for customer in made]
    gone = mine[1]
    deleted = client.delete(
        f"/api/customers/{gone}", params={"version": made[1]["version"]}, headers=auth
    )
    assert deleted.status_code == 204

    answer = _write_back(client, tokens["alice"], customers=mine)

    assert answer.status_code == 202
    job = runtime.queue.get(answer.json()["job_id"])
    assert job.payload["write_back"] == {"Customers": sorted(set(mine) - {gone})}
    assert answer.json()["left_out"] == {"customers": [gone]}
    assert answer.json()["message"] == (
        f"customer {gone} is not in your book; the rest will be written back"
    )


def test_write_back_of_records_not_in_the_callers_book_is_refused_naming_them(
    client: TestClient, tokens: dict[str, str], runtime: Runtime
) -> None:
    bobs = _customer_ids(client, tokens["bob"])[:7]
    answers = {
        "customers": _write_back(client, tokens["alice"], customers=bobs[:1]),
        "policies": _write_back(client, tokens["alice"], policies=[999_999]),
        "many": _write_back(client, tokens["alice"], customers=bobs),
        "none": _write_back(client, tokens["alice"]),
        "zero": _write_back(client, tokens["alice"], policies=[0]),
        "text": _write_back(client, tokens["alice"], policies=["all"]),
        "true": _write_back(client, tokens["alice"], policies=[True]),
        "all": _write_back(client, tokens["alice"], all="yes"),
        "both": _write_back(client, tokens["alice"], all=True, policies=[1]),
        "other": _write_back(client, tokens["alice"], claims=[1]),
    }
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(
        answers, 422
    )
    errors = {name: a.json()["detail"][0] for name, a in answers.items()}
    assert errors["customers"]["msg"] == f"customer {bobs[0]} is not in your book"
    assert errors["policies"]["field"] == "policies"
    assert errors["policies"]["msg"] == "policy 999999 is not in your book"
    assert errors["many"]["msg"].endswith("and 2 more are not in your book")
    both = _write_back(
        client, tokens["alice"], customers=bobs[:1], policies=[999_999]
    ).json()["detail"][0]["msg"]
    assert both == (
        f"customer {bobs[0]} is not in your book; policy 999999 is not in your book"
    )
    assert errors["none"]["msg"] == "name at least one record to write back"
    assert errors["all"]["msg"] == "must be true or false"
    assert errors["both"]["field"] == "all"
    assert errors["both"]["msg"] == "give all or the records to write back, not both"
    assert [
        errors[name]["field"] for name in ("zero", "text", "true", "all", "other")
    ] == ["policies.0", "policies.0", "policies.0", "all", "claims"]
    assert runtime.queue.status(None, recent=10)["queued"] == []


@pytest.mark.parametrize(
    "lists",
    [{"customers": []}, {"policies": []}, {"customers": [], "policies": []}],
)
def test_write_back_of_all_with_a_list_of_records_even_empty_is_refused(
    client: TestClient,
    tokens: dict[str, str],
    runtime: Runtime,
    lists: dict[str, list[int]],
) -> None:
    answer = _write_back(client, tokens["alice"], all=True, **lists)

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["field"] == "all"
    assert error["msg"] == "give all or the records to write back, not both"
    assert runtime.queue.status(None, recent=10)["queued"] == []


def test_a_user_cannot_see_or_cancel_another_users_job(
    client: TestClient, tokens: dict[str, str]
) -> None:
    job = client.post(
        "/api/insurance/sync/to-sheet", headers=bearer(tokens["bob"])
    ).json()
    other = bearer(tokens["alice"])
    assert client.get(job["status_url"], headers=other).status_code == 404
    assert (
        client.post(
            f"/api/insurance/sync/jobs/{job['job_id']}/cancel", headers=other
        ).status_code
        == 404
    )
    assert (
        client.get("/api/insurance/sync/status", headers=other).json()["queued"] == []
    )


def test_out_of_range_ids_and_nulls_answer_422_never_500(alice: TestClient) -> None:
    huge = "99999999999999999999999"
    policy = _first_policy(alice)
    requests = [
        ("GET", f"/api/customers?offset={huge}", None),
        ("GET", f"/api/customers?ids={huge}", None),
        ("GET", f"/api/customers?agent_id={huge}", None),
        ("GET", f"/api/policies?customer_id={huge}", None),
        ("GET", f"/api/customers/{huge}", None),
        ("PATCH", f"/api/customers/{huge}", {"version": 1, "city": "x"}),
        ("GET", f"/api/insurance/sync/jobs/{huge}", None),
        (
            "PATCH",
            f"/api/policies/{policy['id']}",
            {"version": policy["version"], "effective_date": None},
        ),
        (
            "PATCH",
            f"/api/policies/{policy['id']}",
            {"version": policy["version"], "premium": None},
        ),
        ("POST", "/api/customers", {"name": "a\u0000b"}),
        ("POST", "/api/customers", {"name": "Old", "date_of_birth": "0001-01-01"}),
    ]
    for method, url, body in requests:
        answer = alice.request(method, url, json=body)
        assert answer.status_code == 422, (method, url, answer.text)
    named = alice.patch(
        f"/api/policies/{policy['id']}",
        json={"version": policy["version"], "premium": None},
    )
    assert named.json()["detail"][0]["field"] == "premium"


RECORD_ID = "must be a record ID, a whole number from 1 to 2,147,483,647"


@pytest.mark.parametrize("value", [-1, 0, 2**31, 1.5, "first"], ids=repr)
def test_a_record_id_that_is_none_is_refused_in_plain_words(
    alice: TestClient, value: object
) -> None:
    policy = _first_policy(alice)
    customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]

    answers = [
        _save_policy(alice, policy, customer_id=value),
        alice.patch(
            f"/api/customers/{customer['id']}",
            json={"version": customer["version"], "agent_id": value},
        ),
        alice.patch(
            f"/api/customers/{customer['id']}", json={"version": value, "city": "x"}
        ),
    ]

    told = [[(e["field"], e["msg"]) for e in a.json()["detail"]] for a in answers]
    assert told == [
        [("customer_id", RECORD_ID)],
        [("agent_id", RECORD_ID)],
        [
            (
                "version",
                "must be the version of the record you edited, a whole number from 1",
            )
        ],
    ]


def test_pydantics_own_checks_are_told_in_plain_words(alice: TestClient) -> None:
    policy = _first_policy(alice)

    answers = {
        "limit": alice.get("/api/customers", params={"limit": 501}),
        "offset": alice.get("/api/customers", params={"offset": -1}),
        "email": alice.post("/api/customers", json={"name": "A", "email": "a" * 255}),
        "line": _save_policy(alice, policy, line_of_business="boat"),
        "job": alice.get("/api/insurance/sync/jobs/0"),
    }

    told = {name: a.json()["detail"][0]["msg"] for name, a in answers.items()}
    assert told == {
        "limit": "must be 500 or less",
        "offset": "must be 0 or more",
        "email": "at most 254 characters",
        "line": "must be 'auto', 'home', 'renters', 'life', 'health', 'umbrella', "
        "'commercial' or 'workers-comp'",
        "job": "must be 1 or more",
    }


@pytest.mark.parametrize(
    ("path", "unknown", "takes"),
    [
        ("/api/customers?state=MA&limit=1", "state", "q, agent_id, ids, limit"),
        ("/api/policies?premium=100", "premium", "q, status, line_of_business"),
        ("/api/insurance/sync/status?user=2", "user", "all_users"),
        ("/api/insurance/sync/conflicts?open=false", "open", None),
        ("/api/insurance/sync/events?since=5", "since", "all_users"),
    ],
)
def test_a_query_parameter_a_request_does_not_take_is_a_422_naming_it(
    alice: TestClient, path: str, unknown: str, takes: str | None
) -> None:
    answer = alice.get(path)

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert (error["loc"], error["field"]) == (["query", unknown], unknown)
    assert error["msg"].startswith("is not a parameter of this request")
    if takes is None:
        assert error["msg"].endswith("it takes none")
    else:
        assert f"it takes {takes}" in error["msg"]


def test_a_query_parameter_given_twice_is_a_422_not_the_last_one_winning(
    alice: TestClient,
) -> None:
    answer = alice.get("/api/customers?limit=1&q=a&limit=2")

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert (error["field"], error["msg"]) == (
        "limit",
        "is given more than once; send it once",
    )


def test_a_query_value_whose_bytes_are_not_utf8_is_a_422_naming_it(
    alice: TestClient,
) -> None:
    # Else each bad byte reaches the search as a replacement character, and
    # the search finds nothing, saying nothing of why.
    for path, name in (
        ("/api/customers?q=%ff%fe", "q"),
        ("/api/policies?limit=5&carrier=Acme%e9", "carrier"),
    ):
        answer = alice.get(path)
        assert answer.status_code == 422, (path, answer.text)
        (error,) = answer.json()["detail"]
        assert error["field"] == name and "UTF-8" in error["msg"]
    assert alice.get("/api/customers?q=Jos%C3%A9+R").status_code == 200


def test_the_query_parameters_a_request_takes_still_answer(alice: TestClient) -> None:
    listed = alice.get("/api/customers?q=a&limit=2&offset=0")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["items"]) <= 2


WRONG_TYPES: list[tuple[str, str, dict[str, object], str, str]] = [
    # method, path, body, field, message
    ("POST", "/api/customers", {"name": ["A"]}, "name", "must be text"),
    (
        "POST",
        "/api/customers",
        {"name": "A", "city": 7},
        "city",
        "must be text",
    ),
    (
        "POST",
        "/api/customers",
        {"name": "A", "notes": True},
        "notes",
        "must be text",
    ),
    ("POST", "/api/customers", {"email": "a@b.test"}, "name", "is required"),
    (
        "POST",
        "/api/customers",
        {"name": "A", "nickname": "Al"},
        "nickname",
        "is not a field here; leave it out",
    ),
    (
        "POST",
        "/api/policies",
        {"premium": True},
        "premium",
        "must be an amount, like 1234.50",
    ),
    (
        "POST",
        "/api/policies",
        {"premium": [1]},
        "premium",
        "must be an amount, like 1234.50",
    ),
    (
        "POST",
        "/api/policies",
        {"premium": {"a": 1}},
        "premium",
        "must be an amount, like 1234.50",
    ),
    ("POST", "/api/policies", {"carrier": 12}, "carrier", "must be text"),
    (
        "POST",
        "/api/policies",
        {"policy_number": {}},
        "policy_number",
        "must be text",
    ),
    (
        "PATCH",
        "/api/insurance/sync/target",
        {"spreadsheet_id": 1},
        "spreadsheet_id",
        "must be text",
    ),
    (
        "POST",
        "/api/insurance/sync/write-back",
        {"customers": 7},
        "customers",
        "must be a list, […]",
    ),
    (
        "POST",
        "/api/insurance/sync/write-back",
        {"policies": "1,2"},
        "policies",
        "must be a list, […]",
    ),
    (
        "POST",
        "/api/insurance/sync/write-back",
        {"policies": {"1": 2}},
        "policies",
        "must be a list, […]",
    ),
    (
        "POST",
        "/api/insurance/sync/write-back",
        {"customers": list(range(1, 100_002))},
        "customers",
        "at most 100,000 entries",
    ),
    (
        "POST",
        "/api/insurance/sync/conflicts/1/resolve",
        {"choice": "edit", "value": [1]},
        "value",
        "must be text, a number or null",
    ),
    (
        "POST",
        "/api/insurance/sync/conflicts/1/resolve",
        {"choice": "edit", "value": {"a": 1}},
        "value",
        "must be text, a number or null",
    ),
    (
        "POST",
        "/api/insurance/sync/conflicts/1/resolve",
        {"choice": "edit", "value": True},
        "value",
        "must be text, a number or null",
    ),
    (
        "POST",
        "/api/insurance/sync/conflicts/1/resolve",
        {"value": "x"},
        "choice",
        "is required",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "message"),
    WRONG_TYPES,
    ids=[
        f"{case[1]} {case[3]}={case[2][case[3]]!r:.20}"
        if case[3] in case[2]
        else f"{case[1]} no {case[3]}"
        for case in WRONG_TYPES
    ],
)
def test_a_value_of_the_wrong_kind_is_told_in_plain_words(
    alice: TestClient,
    method: str,
    path: str,
    body: dict[str, object],
    field: str,
    message: str,
) -> None:
    answer = alice.request(method, path, json=body)

    assert answer.status_code == 422, answer.text
    told = [(e["field"], e["msg"]) for e in answer.json()["detail"]]
    assert (field, message) in told
    assert not [msg for _, msg in told if "should" in msg or "Field required" in msg]


def test_a_customer_patch_without_its_version_is_told_it_is_required(
    alice: TestClient,
) -> None:
    customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]

    answer = alice.patch(f"/api/customers/{customer['id']}", json={"city": "Bath"})

    assert answer.json()["detail"] == [
        {
            "loc": ["body", "version"],
            "field": "version",
            "msg": "is required",
            "type": "missing",
        }
    ]


@pytest.mark.parametrize(
    "query", ["sort=bogus", "sort=name;drop", "ids=abc", "ids=1,,2"]
)
def test_a_list_query_out_of_its_form_is_told_in_plain_words(
    alice: TestClient, query: str
) -> None:
    field = query.split("=")[0]
    expected = {
        "sort": "must be id, name, city, state or updated_at, with - before it "
        "for the other way round",
        "ids": "must be record IDs separated by commas, like 3,17,42",
    }[field]

    answer = alice.get(f"/api/customers?{query}")

    assert answer.status_code == 422, answer.text
    assert [(e["field"], e["msg"]) for e in answer.json()["detail"]] == [
        (field, expected)
    ]


def test_a_policy_sort_out_of_its_form_names_the_columns_to_sort_by(
    alice: TestClient,
) -> None:
    answer = alice.get("/api/policies", params={"sort": "customer"})

    assert [e["msg"] for e in answer.json()["detail"]] == [
        "must be id, policy_number, carrier, premium, status, effective_date, "
        "expiration_date or updated_at, with - before it for the other way round"
    ]


@pytest.mark.parametrize("body", [b"1.5", b"-0.0", b"1e3"])
def test_a_body_that_is_a_number_with_a_point_is_no_json_object_either(
    alice: TestClient, body: bytes
) -> None:
    answers = [
        alice.patch(
            "/api/insurance/sync/target",
            content=body,
            headers={"Content-Type": "application/json"},
        ),
        alice.post(
            "/api/insurance/sync/write-back",
            content=body,
            headers={"Content-Type": "application/json"},
        ),
    ]

    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert [e["msg"] for e in answer.json()["detail"]] == [
            "the body must be a JSON object, {…}"
        ]


NOT_A_WRITTEN_DATE = [
    43831,  # a spreadsheet's serial number for 2020-01-01
    43831.5,
    1577836800,  # seconds since 1970: 2020-01-01
    "43831",
    "20200101",
    "2020-01-01T00:00:00",
    "2020-1-1",
    "01/02/2020",
    True,
]


@pytest.mark.parametrize("value", NOT_A_WRITTEN_DATE, ids=repr)
def test_a_birth_date_not_written_yyyy_mm_dd_is_refused_in_plain_words(
    alice: TestClient, value: object
) -> None:
    answer = alice.post(
        "/api/customers", json={"name": "Ann Lee", "date_of_birth": value}
    )

    assert answer.status_code == 422, answer.text
    assert [(e["field"], e["msg"]) for e in answer.json()["detail"]] == [
        ("date_of_birth", "must be a date written YYYY-MM-DD")
    ]


@pytest.mark.parametrize("field", ["effective_date", "expiration_date"])
@pytest.mark.parametrize("value", NOT_A_WRITTEN_DATE, ids=repr)
def test_a_policy_date_not_written_yyyy_mm_dd_is_refused_in_plain_words(
    alice: TestClient, field: str, value: object
) -> None:
    assert _refused_policy_date(alice, field, value) == [
        (field, "must be a date written YYYY-MM-DD")
    ]


@pytest.mark.parametrize("blank", ["", "  ", None], ids=repr)
@pytest.mark.parametrize("field", ["effective_date", "expiration_date"])
def test_a_policy_date_left_blank_is_refused_as_empty_and_the_policy_kept(
    alice: TestClient, field: str, blank: str | None
) -> None:
    assert _refused_policy_date(alice, field, blank) == [(field, "may not be empty")]


def _refused_policy_date(
    alice: TestClient, field: str, value: object
) -> list[tuple[str, str]]:
    """Save ``value`` as a policy's date, which must be refused and leave the
    policy as it was; the (field, message) pairs of the refusal."""
    policy = _first_policy(alice)

    answer = _save_policy(alice, policy, **{field: value})

    assert answer.status_code == 422, answer.text
    assert _first_policy(alice) == policy
    return [(e["field"], e["msg"]) for e in answer.json()["detail"]]


@pytest.mark.parametrize("blank", ["", "  "], ids=repr)
def test_a_birth_date_sent_blank_clears_it_as_null_does(
    alice: TestClient, blank: str
) -> None:
    made = alice.post(
        "/api/customers", json={"name": "Ann Lee", "date_of_birth": "1990-02-03"}
    ).json()

    answer = alice.patch(
        f"/api/customers/{made['id']}",
        json={"version": made["version"], "date_of_birth": blank},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["date_of_birth"] is None


def test_a_date_written_yyyy_mm_dd_that_is_not_on_the_calendar_says_so(
    alice: TestClient,
) -> None:
    answer = alice.post(
        "/api/customers", json={"name": "Ann Lee", "date_of_birth": "1990-02-30"}
    )

    assert answer.status_code == 422, answer.text
    assert [(e["field"], e["msg"]) for e in answer.json()["detail"]] == [
        ("date_of_birth", "1990-02-30 is not a day of the calendar")
    ]


def test_a_birth_date_after_today_is_refused_and_today_is_kept(
    alice: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 5, 1, 23, 59, tzinfo=UTC))
    customer = alice.get("/api/customers", params={"limit": 1}).json()["items"][0]

    refused = [
        alice.post("/api/customers", json={"name": "Ann Lee", "date_of_birth": born})
        for born in ("2026-05-02", "2099-12-31")
    ]
    refused.append(
        alice.patch(
            f"/api/customers/{customer['id']}",
            json={"version": customer["version"], "date_of_birth": "2026-05-02"},
        )
    )
    kept = alice.post(
        "/api/customers", json={"name": "Ann Lee", "date_of_birth": "2026-05-01"}
    )

    for answer in refused:
        assert answer.status_code == 422, answer.text
        assert [(e["field"], e["msg"]) for e in answer.json()["detail"]] == [
            ("date_of_birth", "must not be in the future")
        ]
    assert kept.status_code == 201, kept.text
    assert kept.json()["date_of_birth"] == "2026-05-01"


def test_a_birth_date_written_yyyy_mm_dd_is_kept(alice: TestClient) -> None:
    answer = alice.post(
        "/api/customers", json={"name": "Ann Lee", "date_of_birth": "1990-02-28"}
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["date_of_birth"] == "1990-02-28"


def test_a_body_not_sent_as_json_is_a_415_saying_how_to_send_it(
    alice: TestClient,
) -> None:
    answers = [
        alice.post("/api/customers", content=b'{"name": "Ann"}', headers=headers)
        for headers in ({"Content-Type": "text/plain"}, {})
    ]

    for answer in answers:
        assert answer.status_code == 415, answer.text
        (error,) = answer.json()["detail"]
        assert "Content-Type: application/json" in error["msg"]


def test_a_json_body_that_is_not_an_object_says_so(alice: TestClient) -> None:
    answer = alice.post("/api/customers", json=[{"name": "Ann"}])

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == "the body must be a JSON object, {…}"


@pytest.mark.parametrize("text", ["a\x07b", "\ufffe", "x\uffffy", "\x1b[0m"])
def test_characters_no_sheet_can_hold_are_refused_naming_the_field(
    alice: TestClient, text: str
) -> None:
    answer = alice.post("/api/customers", json={"name": "Ann", "city": text})

    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["field"] == "city" and "not text" in error["msg"]


def test_notes_are_held_to_what_a_workbook_cell_holds_emoji_counting_twice(
    alice: TestClient,
) -> None:
    emoji = "\N{GRINNING FACE}"
    answers = {
        length: alice.post("/api/customers", json={"name": "Ann", "notes": notes})
        for length, notes in (
            ("most", "n" * 32_765),
            ("one more", "n" * 32_766),
            ("emoji", emoji * 16_383),
        )
    }

    assert {k: a.status_code for k, a in answers.items()} == {
        "most": 201,
        "one more": 422,
        "emoji": 422,
    }
    message = answers["emoji"].json()["detail"][0]["msg"]
    assert message == "at most 32,765 characters, an emoji counting as two"


def test_text_too_short_or_long_is_told_in_plain_words(alice: TestClient) -> None:
    messages = [
        alice.post("/api/customers", json=body).json()["detail"][0]["msg"]
        for body in (
            {"name": " "},
            {"name": "x" * 201},
            {"name": "A", "city": "c" * 101},
        )
    ]

    assert messages == [
        "may not be empty",
        "at most 200 characters",
        "at most 100 characters",
    ]


@pytest.mark.parametrize("name", ["\u202e", "\u200b\u200b", "\u0301", "\u2060 \u200d"])
def test_a_name_with_nothing_to_see_is_refused(alice: TestClient, name: str) -> None:
    answer = alice.post("/api/customers", json={"name": name})

    assert answer.status_code == 422
    assert (
        answer.json()["detail"][0]["msg"] == "needs a letter, digit or sign you can see"
    )


def test_a_name_with_invisible_marks_among_letters_is_kept(alice: TestClient) -> None:
    answer = alice.post("/api/customers", json={"name": "Jos\u0065\u0301 Ruiz"})

    assert answer.status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("phone", "\u0662\u0660\u0667 555 0100"),
        ("zip_code", "\u0660\u0664\u0660\u0660\u0661"),
    ],
)
def test_phone_and_zip_take_the_digits_0_to_9_only(
    alice: TestClient, field: str, value: str
) -> None:
    answer = alice.post("/api/customers", json={"name": "Ann", field: value})

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == field


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Phone", "555-abc-1234"),
        ("Phone", "555-s0.5-524440"),
        ("Phone", "+1 (555) 123-4567"),
        ("Phone", "ext 5551234"),
        ("Email", "a@.example.com"),
        ("Email", "a@example.com."),
        ("Email", "Ann@Example.com"),
        ("Email", "a@b@example.com"),
    ],
)
def test_the_api_takes_a_phone_or_email_exactly_when_a_sheet_would(
    alice: TestClient, header: str, value: str
) -> None:
    # A value the API took but a sheet refused would keep its whole row out
    # of every sync until someone found it.
    column = next(c for c in CUSTOMERS.columns if c.header == header)
    try:
        parse_cell(column, value)
        refused_by_sheet = None
    except CellError as exc:
        refused_by_sheet = exc.reason

    answer = alice.post("/api/customers", json={"name": "Ann", column.field: value})

    if refused_by_sheet is None:
        assert answer.status_code == 201, answer.text
    else:
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["field"] == column.field
        assert refused_by_sheet in answer.json()["detail"][0]["msg"]


def test_look_alike_policy_numbers_sent_at_once_make_one_policy(
    alice: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request checks the number, then saves: sent at once, with a moment
    # between the check and the save, only one may find the number free.
    checked = Book._check_policy_number

    def check_then_dawdle(self: Book, *args: object) -> None:
        checked(self, *args)  # type: ignore[arg-type]
        time.sleep(0.3)

    monkeypatch.setattr(Book, "_check_policy_number", check_then_dawdle)
    customer = alice.get("/api/customers?limit=1").json()["items"][0]["id"]
    policy = {
        "customer_id": customer,
        "carrier": "Acme",
        "line_of_business": "auto",
        "effective_date": "2026-01-01",
        "expiration_date": "2027-01-01",
        "premium": "100.00",
    }
    numbers = ["RACE-1", "race-1", "Race-1", "\uff32\uff21\uff23\uff25-1"]

    with ThreadPoolExecutor(len(numbers)) as pool:
        answers = list(
            pool.map(
                lambda n: alice.post(
                    "/api/policies", json={**policy, "policy_number": n}
                ),
                numbers,
            )
        )

    assert sorted(a.status_code for a in answers) == [201, 422, 422, 422]
    refused = [a.json()["detail"][0] for a in answers if a.status_code == 422]
    assert all(e["field"] == "policy_number" for e in refused), refused
    assert all("already used" in e["msg"] for e in refused), refused


def test_a_state_is_one_of_the_us_postal_codes(alice: TestClient) -> None:
    answers = {
        state: alice.post("/api/customers", json={"name": "Ann", "state": state})
        for state in ("XX", "pr", "DC")
    }

    assert {state: a.status_code for state, a in answers.items()} == {
        "XX": 422,
        "pr": 201,
        "DC": 201,
    }
    assert answers["XX"].json()["detail"][0]["field"] == "state"
    assert answers["pr"].json()["state"] == "PR"


def test_tabs_and_line_breaks_are_text(alice: TestClient) -> None:
    answer = alice.post("/api/customers", json={"name": "Ann", "notes": "a\tb\r\nc"})

    assert answer.status_code == 201, answer.text
    # One kind of line break, as a workbook gives it back: no phantom edit.
    assert answer.json()["notes"] == "a\tb\nc"


def test_lone_surrogate_in_json_is_rejected_as_text(alice: TestClient) -> None:
    answer = alice.post(
        "/api/customers",
        content=b'{"name": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "name"


def test_search_treats_wildcards_literally(alice: TestClient) -> None:
    assert alice.get("/api/customers", params={"q": "%"}).json()["total"] == 0
    underscored = alice.get("/api/customers", params={"q": "_"}).json()
    everyone = alice.get("/api/customers").json()
    assert underscored["total"] < everyone["total"]
    assert all("_" in c["email"] for c in underscored["items"])


def test_a_deleted_records_id_is_never_given_to_a_new_one(alice: TestClient) -> None:
    # A row kept in the sheet for a deleted record must never be taken over by
    # a new record that happens to get the same ID.
    first = alice.post("/api/customers", json={"name": "Reuse A"}).json()
    assert alice.delete(f"/api/customers/{first['id']}").status_code == 204
    second = alice.post("/api/customers", json={"name": "Reuse B"}).json()
    assert second["id"] > first["id"]
    customer = second["id"]
    body = {
        "policy_number": "R-1",
        "customer_id": customer,
        "carrier": "Harbor Mutual",
        "line_of_business": "auto",
        "effective_date": "2026-05-01",
        "expiration_date": "2027-05-01",
        "premium": "100.00",
    }
    policy = alice.post("/api/policies", json=body).json()
    assert alice.delete(f"/api/policies/{policy['id']}").status_code == 204
    again = alice.post("/api/policies", json={**body, "policy_number": "R-2"}).json()
    assert again["id"] > policy["id"]


def test_malformed_json_names_no_field_and_says_where_it_broke(
    alice: TestClient,
) -> None:
    answer = alice.post(
        "/api/customers",
        content=b'{"name": ',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422
    detail = answer.json()["detail"][0]
    assert detail["field"] == ""
    assert "JSON" in detail["msg"] and "9" in detail["msg"]


def test_a_nul_character_in_a_search_answers_422_naming_the_parameter(
    alice: TestClient,
) -> None:
    for path, name in (
        ("/api/customers?q=%00", "q"),
        ("/api/policies?q=a%00", "q"),
        ("/api/policies?carrier=a%00b", "carrier"),
    ):
        answer = alice.get(path)
        assert answer.status_code == 422, (path, answer.text)
        detail = answer.json()["detail"]
        assert [error["field"] for error in detail] == [name]
        assert "not text" in detail[0]["msg"]


def test_true_or_false_for_a_version_or_an_id_answers_422_naming_the_field(
    alice: TestClient,
) -> None:
    policy = alice.get("/api/policies?limit=1").json()["items"][0]
    answer = alice.patch(f"/api/policies/{policy['id']}", json={"version": True})
    assert answer.status_code == 422
    assert [error["field"] for error in answer.json()["detail"]] == ["version"]
    answer = alice.patch(
        f"/api/policies/{policy['id']}",
        json={"version": policy["version"], "customer_id": True},
    )
    assert answer.status_code == 422
    assert [error["field"] for error in answer.json()["detail"]] == ["customer_id"]
    assert alice.get(f"/api/policies/{policy['id']}").json() == policy


def test_a_database_that_is_full_or_down_answers_503_with_a_retry_time(
    alice: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: object) -> None:
        raise OperationalError(
            "INSERT INTO jobs ...", {}, Exception("sorry, too many clients already")
        )

    monkeypatch.setattr(runtime.sync, "enqueue", refused)
    answer = alice.post("/api/insurance/sync/to-sheet")

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "try again" in answer.json()["detail"]
    assert "too many clients" not in answer.text  # no server internals


@pytest.mark.parametrize("zero", [-0.0, "-0", "-0.00"])
def test_a_premium_of_minus_zero_is_stored_as_zero(
    alice: TestClient, zero: object
) -> None:
    customer = alice.post("/api/customers", json={"name": "Zero Premium"}).json()
    body = {
        "policy_number": f"Z-{zero}",
        "customer_id": customer["id"],
        "carrier": "Harbor Mutual",
        "line_of_business": "auto",
        "effective_date": "2026-05-01",
        "expiration_date": "2027-05-01",
        "premium": zero,
    }
    created = alice.post("/api/policies", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["premium"] == "0.00"
    stored = alice.get(f"/api/policies/{created.json()['id']}").json()
    assert stored["premium"] == "0.00"


def test_the_api_docs_show_each_text_fields_length_limits(alice: TestClient) -> None:
    schemas = alice.get("/openapi.json").json()["components"]["schemas"]
    customer = schemas["CustomerCreate"]["properties"]
    policy = schemas["PolicyCreate"]["properties"]

    assert (customer["name"]["minLength"], customer["name"]["maxLength"]) == (1, 200)
    assert customer["city"]["maxLength"] == 100
    assert "minLength" not in customer["city"]
    assert customer["address"]["maxLength"] == 300
    assert customer["notes"]["maxLength"] == 32_765
    assert policy["policy_number"]["maxLength"] == 40
    assert policy["carrier"]["maxLength"] == 100


def test_the_api_docs_show_a_record_ids_bounds_as_its_minimum_and_maximum(
    alice: TestClient,
) -> None:
    schemas = alice.get("/openapi.json").json()["components"]["schemas"]
    customer_id = schemas["PolicyCreate"]["properties"]["customer_id"]
    version = schemas["PolicyUpdate"]["properties"]["version"]

    assert (customer_id["minimum"], customer_id["maximum"]) == (1, 2**31 - 1)
    assert (version["minimum"], version["maximum"]) == (1, 2**31 - 1)


def test_search_finds_names_and_carriers_in_any_letter_case_of_any_alphabet(
    alice: TestClient,
) -> None:
    customers = {
        name: alice.post("/api/customers", json={"name": name}).json()["id"]
        for name in ("Émile Zola", "Ольга Петрова", "Ærø Ömer", "Zoe\u0301 Dubois")
    }
    policy = alice.post(
        "/api/policies",
        json={
            "policy_number": "UC-1",
            "customer_id": customers["Ольга Петрова"],
            "carrier": "Société Mutuelle",
            "line_of_business": "auto",
            "effective_date": "2026-05-01",
            "expiration_date": "2027-05-01",
            "premium": "100.00",
        },
    ).json()

    def found(path: str, q: str) -> set[int]:
        return {item["id"] for item in alice.get(path, params={"q": q}).json()["items"]}

    assert found("/api/customers", "émile") == {customers["Émile Zola"]}
    assert found("/api/customers", "ÉMILE") == {customers["Émile Zola"]}
    assert found("/api/customers", "ольга") == {customers["Ольга Петрова"]}
    assert found("/api/customers", "ærø ö") == {customers["Ærø Ömer"]}
    # An accent stored apart from its letter, or typed apart, is the same.
    assert found("/api/customers", "ZOÉ") == {customers["Zoe\u0301 Dubois"]}
    assert found("/api/customers", "e\u0301mile") == {customers["Émile Zola"]}
    assert found("/api/policies", "SOCIÉTÉ") == {policy["id"]}
    assert found("/api/policies", "петрова") == {policy["id"]}


def test_search_takes_a_sharp_s_for_ss_and_a_final_sigma_for_sigma(
    alice: TestClient,
) -> None:
    # What lower case alone keeps apart: "STRASSE" is how "Straße" is
    # written in capitals, and a Greek word's last sigma has its own form.
    customers = {
        name: alice.post("/api/customers", json={"name": name}).json()["id"]
        for name in ("Hauptstraße 5", "ODYSSEUS WEG", "ΟΔΥΣΣΕΑΣ Παππάς")
    }

    def found(q: str) -> set[int]:
        answer = alice.get("/api/customers", params={"q": q}).json()
        return {item["id"] for item in answer["items"]} & set(customers.values())

    for typed in ("STRASSE", "strasse", "straße", "STRAẞE"):
        assert found(typed) == {customers["Hauptstraße 5"]}, typed
    assert found("Οδυσσέας") == set()  # the accent is a letter of its own here
    assert found("Οδυσσεας") == {customers["ΟΔΥΣΣΕΑΣ Παππάς"]}
    assert found("ΟΔΥΣΣΕΑΣ") == {customers["ΟΔΥΣΣΕΑΣ Παππάς"]}
