"""JSON bodies the parser cannot take get the answer every input error gets:
422, a ``detail`` list naming where, and a plain message."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


def refusal(
    client: TestClient, body: bytes, path: str = "/api/customers", method: str = "POST"
) -> Any:
    answer = client.request(method, path, content=body, headers=JSON)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["field"] == ""
    return error


def test_a_body_in_latin_1_is_said_not_to_be_utf_8(alice: TestClient) -> None:
    error = refusal(alice, '{"name": "José"}'.encode("latin-1"))

    assert error["msg"].startswith("the body is not valid UTF-8 JSON")
    assert "0xe9" in error["msg"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_utf_16_or_32_is_refused_as_latin_1_is(
    alice: TestClient, encoding: str
) -> None:
    error = refusal(alice, '{"name": "Ann"}'.encode(encoding))

    assert error["msg"].startswith("the body is not valid UTF-8 JSON")
    assert alice.get("/api/customers", params={"q": "Ann"}).json()["total"] == 0


def test_a_body_that_gives_a_field_twice_names_it_and_stores_nothing(
    alice: TestClient,
) -> None:
    body = b'{"name": "Ann Twice", "notes": "a", "notes": "b"}'
    answer = alice.post("/api/customers", content=body, headers=JSON)

    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["type"] == "json_duplicate_key"
    assert (error["loc"], error["field"]) == (["body", "notes"], "notes")
    assert "'notes'" in error["msg"] and "twice" in error["msg"]
    assert alice.get("/api/customers", params={"q": "Ann Twice"}).json()["total"] == 0


def test_the_same_name_in_two_different_objects_is_not_a_duplicate(
    alice: TestClient,
) -> None:
    body = b'{"choice": "edit", "value": {"a": 1, "b": {"a": 2}}}'
    answer = alice.post(
        "/api/insurance/sync/conflicts/999999/resolve", content=body, headers=JSON
    )

    assert answer.status_code != 500
    assert "json_duplicate_key" not in answer.text


def test_a_body_nested_too_deeply_says_so(alice: TestClient) -> None:
    depth = 100_000
    body = b'{"name": "Ann", "notes": ' + b"[" * depth + b"]" * depth + b"}"

    error = refusal(alice, body)

    assert "nested too deeply" in error["msg"]


@pytest.mark.parametrize(
    "number", ["1" * 5_000, "0." + "1" * 5_000, "1" * 101, "-" + "9" * 200]
)
def test_a_number_of_thousands_of_digits_is_a_number_too_long(
    alice: TestClient, number: str
) -> None:
    body = b'{"name": "Ann", "agent_id": ' + number.encode() + b"}"

    error = refusal(alice, body)

    assert "a number too long" in error["msg"]


def test_sync_requests_get_the_same_answers(alice: TestClient) -> None:
    error = refusal(
        alice,
        b'{"choice": "edit", "value": ' + b"7" * 5_000 + b"}",
        "/api/insurance/sync/conflicts/1/resolve",
    )

    assert "a number too long" in error["msg"]


def test_numbers_of_ordinary_length_are_read_as_before(alice: TestClient) -> None:
    policy = alice.get("/api/policies", params={"limit": 1}).json()["items"][0]
    body = f'{{"version": {policy["version"]}.0, "premium": 1234.5e0}}'

    answer = alice.patch(f"/api/policies/{policy['id']}", content=body, headers=JSON)

    assert answer.status_code == 200, answer.text
    assert answer.json()["premium"] == "1234.50"


@pytest.mark.parametrize("number", ["1e9999999", "-1e-9999999", "0e9999999"])
def test_a_number_too_large_or_too_small_for_any_field_is_refused_at_once(
    alice: TestClient, number: str
) -> None:
    body = b'{"name": "Ann", "agent_id": ' + number.encode() + b"}"

    error = refusal(alice, body)

    assert "a number too large or too small" in error["msg"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(alice: TestClient, constant: str) -> None:
    policy = alice.get("/api/policies", params={"limit": 1}).json()["items"][0]
    body = f'{{"version": {policy["version"]}, "premium": {constant}}}'.encode()

    error = refusal(alice, body, f"/api/policies/{policy['id']}", "PATCH")

    assert error["msg"] == (
        f"the body is not valid JSON ({constant} is not a JSON number)"
    )


def _megabytes(count: int) -> bytes:
    return b'{"name": "Ann", "notes": "' + b"x" * (count * 1024 * 1024) + b'"}'


def test_a_body_past_the_size_limit_is_a_413_saying_the_limit(
    alice: TestClient,
) -> None:
    answer = alice.post("/api/customers", content=_megabytes(5), headers=JSON)

    assert answer.status_code == 413
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body"]
    assert "at most 4 MB" in error["msg"]
    assert alice.get("/api/customers", params={"q": "Ann"}).json()["total"] == 0


def test_a_body_sent_in_chunks_past_the_limit_is_refused_as_well(
    alice: TestClient,
) -> None:
    def chunks() -> Any:
        body = _megabytes(5)
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    answer = alice.post("/api/customers", content=chunks(), headers=JSON)

    assert answer.status_code == 413
    assert "at most 4 MB" in answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("path", "method"), [("/api/customers", "POST"), ("/api/policies/1", "PATCH")]
)
def test_no_body_at_all_says_the_body_is_missing(
    alice: TestClient, path: str, method: str
) -> None:
    error = refusal(alice, b"", path, method)

    assert error["msg"] == "the body is missing: send a JSON object, {…}"


def _jobs_of(client: TestClient) -> int:
    status = client.get("/api/insurance/sync/status").json()
    return sum(len(jobs) for jobs in status.values())


SYNC_REQUESTS = ["/api/insurance/sync/to-sheet", "/api/insurance/sync/from-sheet"]


@pytest.mark.parametrize("path", SYNC_REQUESTS)
def test_a_field_sent_to_a_request_that_takes_no_body_is_named_and_nothing_queued(
    alice: TestClient, path: str
) -> None:
    before = _jobs_of(alice)

    answer = alice.post(path, json={"tabs": ["Policies"], "dry_run": True})

    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert [(error["loc"], error["field"]) for error in errors] == [
        (["body", "tabs"], "tabs"),
        (["body", "dry_run"], "dry_run"),
    ]
    assert all("takes no body" in error["msg"] for error in errors)
    assert _jobs_of(alice) == before


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff", b"null"], ids=repr)
def test_any_other_body_sent_to_a_request_that_takes_none_is_refused(
    alice: TestClient, body: bytes
) -> None:
    before = _jobs_of(alice)

    error = refusal(alice, body, SYNC_REQUESTS[0])

    assert error["msg"] == "this request takes no body"
    assert _jobs_of(alice) == before


def test_a_body_past_the_limit_sent_to_a_request_that_takes_none_is_a_413(
    alice: TestClient,
) -> None:
    before = _jobs_of(alice)

    answer = alice.post(SYNC_REQUESTS[1], content=_megabytes(5), headers=JSON)

    assert answer.status_code == 413
    assert _jobs_of(alice) == before


def test_a_request_that_takes_no_body_still_takes_an_empty_one(
    alice: TestClient,
) -> None:
    for body in (b"", b"  \n", b"{}"):
        answer = alice.post(SYNC_REQUESTS[0], content=body, headers=JSON)

        assert answer.status_code == 202, answer.text
