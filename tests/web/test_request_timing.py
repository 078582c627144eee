"""Every answer says how long the server spent on it, and the metrics add it up."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from sheetbridge.web.timing import REQUEST_SECONDS

SERVER_TIMING = re.compile(r"^app;dur=(\d+(\.\d+)?)$")


def _count(method: str, route: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        f"{REQUEST_SECONDS._name}_count",
        {"method": method, "route": route, "status": code},
    )
    return value or 0.0


def test_an_answer_carries_the_server_time_in_milliseconds(alice: TestClient) -> None:
    answer = alice.post("/api/insurance/sync/to-sheet")
    assert answer.status_code == 202
    match = SERVER_TIMING.match(answer.headers["server-timing"])
    assert match is not None, answer.headers["server-timing"]
    assert 0 < float(match.group(1)) < 10_000


def test_requests_are_counted_by_route_template_not_by_path(
    alice: TestClient,
) -> None:
    route = "/api/insurance/sync/jobs/{job_id}"
    before = _count("GET", route, "404")
    for job_id in (987_001, 987_002, 987_003):
        assert alice.get(f"/api/insurance/sync/jobs/{job_id}").status_code == 404
    assert _count("GET", route, "404") == before + 3
    assert _count("GET", "/api/insurance/sync/jobs/987001", "404") == 0


def test_unknown_paths_share_one_label(alice: TestClient) -> None:
    before = _count("GET", "unmatched", "404")
    assert alice.get("/no/such/page/1").status_code == 404
    assert alice.get("/no/such/page/2").status_code == 404
    assert _count("GET", "unmatched", "404") == before + 2


def test_a_rejected_request_is_timed_with_its_status(alice: TestClient) -> None:
    route = "/api/policies/{policy_id}"
    before = _count("PATCH", route, "422")
    answer = alice.patch("/api/policies/1", json={"premium": "lots"})
    assert answer.status_code == 422
    assert "server-timing" in answer.headers
    assert _count("PATCH", route, "422") == before + 1


def test_static_files_and_the_api_schema_get_labels_of_their_own(
    alice: TestClient,
) -> None:
    schema = _count("GET", "/openapi.json", "200")
    static = _count("GET", "/static/{path}", "200")
    assert alice.get("/openapi.json").status_code == 200
    assert alice.get("/static/app.js").status_code == 200
    assert _count("GET", "/openapi.json", "200") == schema + 1
    assert _count("GET", "/static/{path}", "200") == static + 1
