"""The emulator's own behaviour, over HTTP, beyond what the recordings cover."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import httpx
import pytest

from sheetbridge.testing.emulator import EmulatorServer, Knobs
from sheetbridge.testing.model import Json, Sheet, Spreadsheet
from tests.support.server import free_port


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url) as client:
        yield client


def new_book(http: httpx.Client, **props: object) -> str:
    answer = http.post("/v4/spreadsheets", json={"properties": {"title": "t", **props}})
    assert answer.status_code == 200
    body = answer.json()
    assert body["sheets"][0]["properties"]["gridProperties"] == {
        "rowCount": 1000,
        "columnCount": 26,
    }
    assert body["properties"]["timeZone"] == props.get("timeZone", "Etc/GMT")
    return str(body["spreadsheetId"])


def put(
    http: httpx.Client,
    book: str,
    rng: str,
    values: list[list[object]],
    option: str = "RAW",
) -> httpx.Response:
    return http.put(
        f"/v4/spreadsheets/{book}/values/{rng}",
        params={"valueInputOption": option},
        json={"values": values},
    )


def test_create_honours_body_time_zone_and_drive_deletes(http: httpx.Client) -> None:
    book = new_book(http, timeZone="Europe/Paris")
    assert http.delete(f"/drive/v3/files/{book}").status_code == 204
    missing = http.get(f"/v4/spreadsheets/{book}")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
        }
    }


def test_user_entered_parses_numbers_dates_formulas_and_apostrophes(
    http: httpx.Client,
) -> None:
    book = new_book(http)
    put(
        http,
        book,
        "A1:F1",
        [["0042", "2020-01-01", "=2*3", "'=1+1", "TRUE", "x"]],
        "USER_ENTERED",
    )
    raw = http.get(
        f"/v4/spreadsheets/{book}/values/A1:F1",
        params={"valueRenderOption": "UNFORMATTED_VALUE"},
    ).json()
    assert raw["values"] == [[42, 43831, 6, "=1+1", True, "x"]]
    formula = http.get(
        f"/v4/spreadsheets/{book}/values/A1:F1", params={"valueRenderOption": "FORMULA"}
    ).json()
    assert formula["values"][0][2] == "=2*3"
    dates = http.get(
        f"/v4/spreadsheets/{book}/values/A1:F1",
        params={
            "valueRenderOption": "UNFORMATTED_VALUE",
            "dateTimeRenderOption": "FORMATTED_STRING",
        },
    ).json()
    assert dates["values"][0][1] == "2020-01-01"


def test_raw_keeps_text_literal(http: httpx.Client) -> None:
    book = new_book(http)
    put(http, book, "A1:C1", [["0042", "=2*3", "+1555"]])
    shown = http.get(f"/v4/spreadsheets/{book}/values/A1:C1").json()
    assert shown["values"] == [["0042", "=2*3", "+1555"]]


def test_fifty_thousand_character_limit_and_grid_limits(http: httpx.Client) -> None:
    book = new_book(http)
    too_long = put(http, book, "A1", [["x" * 50_001]])
    assert too_long.status_code == 400
    assert "50000 characters" in too_long.json()["error"]["message"]
    assert put(http, book, "A1", [["x" * 50_000]]).status_code == 200
    past = put(http, book, "A1001", [["x"]])
    assert past.status_code == 400
    assert past.json()["error"]["status"] == "INVALID_ARGUMENT"


def _date_format(column: int, rows: tuple[int, int], kind: str = "DATE") -> object:
    """A repeatCell giving column (0-based) of rows [first, end) a date format."""
    return {
        "repeatCell": {
            "range": {
                "sheetId": 0,
                "startRowIndex": rows[0],
                "endRowIndex": rows[1],
                "startColumnIndex": column,
                "endColumnIndex": column + 1,
            },
            "cell": {"userEnteredFormat": {"numberFormat": {"type": kind}}},
            "fields": "userEnteredFormat.numberFormat",
        }
    }


def _shown(http: httpx.Client, book: str, rng: str, render: str) -> object:
    answer = http.get(
        f"/v4/spreadsheets/{book}/values/{rng}", params={"valueRenderOption": render}
    )
    return answer.json()["values"]


def test_a_date_format_shows_serials_as_dates_and_stays_over_a_raw_write(
    http: httpx.Client,
) -> None:
    book = new_book(http)
    put(http, book, "A1:B2", [[43831, 1.5], [43832, 2]])

    answer = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={
            "requests": [_date_format(0, (0, 2)), _date_format(1, (0, 1), "DATE_TIME")]
        },
    )

    assert answer.status_code == 200 and answer.json()["replies"] == [{}, {}]
    assert _shown(http, book, "A1:B2", "FORMATTED_VALUE") == [
        ["1/1/2020", "12/31/1899 12:00:00"],
        ["1/2/2020", "2"],
    ]
    assert _shown(http, book, "A1:B2", "UNFORMATTED_VALUE") == [
        [43831, 1.5],
        [43832, 2],
    ]
    put(http, book, "A2", [[43833]])
    assert _shown(http, book, "A2", "FORMATTED_VALUE") == [["1/3/2020"]]


def test_a_format_given_to_empty_cells_shows_in_values_written_later(
    http: httpx.Client,
) -> None:
    book = new_book(http)
    put(http, book, "A1", [["Born"]])
    formatted = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={"requests": [_date_format(0, (1, 3))]},
    )
    empty = http.get(f"/v4/spreadsheets/{book}/values/A1:A5").json()

    put(http, book, "A2:A3", [[43831], [43832]])
    shown = _shown(http, book, "A1:A3", "FORMATTED_VALUE")
    cleared = http.post(f"/v4/spreadsheets/{book}/values/A2:clear")
    put(http, book, "A2", [[43833]])

    assert formatted.status_code == 200 and cleared.status_code == 200
    assert empty["values"] == [["Born"]]  # a format alone is no value
    assert shown == [["Born"], ["1/1/2020"], ["1/2/2020"]]
    assert _shown(http, book, "A2", "FORMATTED_VALUE") == [["1/3/2020"]]


def test_a_format_outside_the_grid_or_of_an_unknown_type_is_refused(
    http: httpx.Client,
) -> None:
    book = new_book(http)
    put(http, book, "A1", [[43831]])

    outside = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={"requests": [_date_format(0, (0, 1001))]},
    )
    unknown = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={"requests": [_date_format(0, (0, 1), "CALENDAR")]},
    )

    assert outside.status_code == 400 and unknown.status_code == 400
    assert _shown(http, book, "A1", "FORMATTED_VALUE") == [["43831"]]


def test_structural_batch_update_is_atomic(http: httpx.Client) -> None:
    book = new_book(http)
    answer = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={
            "requests": [
                {"addSheet": {"properties": {"title": "New"}}},
                {"deleteSheet": {"sheetId": 12345}},
            ]
        },
    )
    assert answer.status_code == 400
    titles = [
        s["properties"]["title"]
        for s in http.get(f"/v4/spreadsheets/{book}").json()["sheets"]
    ]
    assert titles == ["Sheet1"]


def test_open_ended_and_column_major_reads(http: httpx.Client) -> None:
    book = new_book(http)
    put(http, book, "A1:B3", [["h1", "h2"], ["a"], ["b", "c"]])
    rows = http.get(f"/v4/spreadsheets/{book}/values/'Sheet1'!A2:Z").json()
    assert rows == {
        "range": "Sheet1!A2:Z1000",
        "majorDimension": "ROWS",
        "values": [["a"], ["b", "c"]],
    }
    cols = http.get(
        f"/v4/spreadsheets/{book}/values/Sheet1!A1:B3",
        params={"majorDimension": "COLUMNS"},
    ).json()
    assert cols["values"] == [["h1", "a", "b"], ["h2", "", "c"]]


def test_quota_knob_answers_resource_exhausted(
    server: EmulatorServer, http: httpx.Client
) -> None:
    book = new_book(http)
    server.state.knobs = Knobs(read_quota_per_project=2)
    assert http.get(f"/v4/spreadsheets/{book}").status_code == 200
    assert http.get(f"/v4/spreadsheets/{book}").status_code == 200
    refused = http.get(f"/v4/spreadsheets/{book}")
    assert refused.status_code == 429
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert int(refused.headers["retry-after"]) >= 1


def test_required_token_knob(server: EmulatorServer, http: httpx.Client) -> None:
    server.state.knobs = Knobs(required_token="s3cret")
    answer = http.post("/v4/spreadsheets", json={})
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    ok = http.post(
        "/v4/spreadsheets", json={}, headers={"Authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 200


def test_rows_deleted_above_a_merge_move_it_up() -> None:
    book = Spreadsheet("s", "t")
    book.sheets.append(Sheet(1, "T", 0, rows=[["a"], ["b"], ["c"], ["d"]]))
    merge = {"sheetId": 1, "startRowIndex": 2, "endRowIndex": 4}
    merge.update({"startColumnIndex": 0, "endColumnIndex": 2})
    delete = {"sheetId": 1, "dimension": "ROWS", "startIndex": 0, "endIndex": 1}
    rng = random.Random(0)

    book.batch_update(
        [
            {"mergeCells": {"range": merge, "mergeType": "MERGE_ALL"}},
            {"deleteDimension": {"range": delete}},
        ],
        rng,
    )

    assert book.sheets[0].merges == [
        {
            "sheetId": 1,
            "startRowIndex": 1,
            "endRowIndex": 3,
            "startColumnIndex": 0,
            "endColumnIndex": 2,
        }
    ]
    assert book.sheets[0].rows == [["b"], ["c"], [None]]


def test_rows_inserted_above_a_merge_move_it_down_and_inside_it_grow_it() -> None:
    book = Spreadsheet("s", "t")
    book.sheets.append(Sheet(1, "T", 0, rows=[["a"], ["b"], ["c"]]))
    merge = {"sheetId": 1, "startRowIndex": 1, "endRowIndex": 3}
    merge.update({"startColumnIndex": 0, "endColumnIndex": 1})

    def insert(start: int) -> Json:
        span = {"sheetId": 1, "dimension": "ROWS"}
        return {
            "insertDimension": {
                "range": {**span, "startIndex": start, "endIndex": start + 1}
            }
        }

    book.batch_update(
        [{"mergeCells": {"range": merge, "mergeType": "MERGE_ALL"}}, insert(0)],
        random.Random(0),
    )
    assert [(m["startRowIndex"], m["endRowIndex"]) for m in book.sheets[0].merges] == [
        (2, 4)
    ]
    book.batch_update([insert(3)], random.Random(0))
    assert [(m["startRowIndex"], m["endRowIndex"]) for m in book.sheets[0].merges] == [
        (2, 5)
    ]


def test_knobs_are_changed_while_it_serves_through_its_own_address(
    server: EmulatorServer, http: httpx.Client
) -> None:
    # A person trying a sync by hand turns on errors or latency between
    # syncs, without a restart that would lose the spreadsheets.
    book = new_book(http)

    changed = http.patch("/_emulator/knobs", json={"error_rate": 1, "latency_ms": 5})

    assert changed.status_code == 200
    assert changed.json()["error_rate"] == 1.0 and changed.json()["latency_ms"] == 5
    assert http.get("/_emulator/knobs").json() == changed.json()
    assert http.get(f"/v4/spreadsheets/{book}").status_code in (500, 503)
    http.patch("/_emulator/knobs", json={"error_rate": 0})
    assert http.get(f"/v4/spreadsheets/{book}").status_code == 200


@pytest.mark.parametrize(
    ("body", "told"),
    [
        ({"error_rat": 1}, "unknown knob 'error_rat'"),
        ({"error_rate": "often"}, "error_rate"),
        ({"error_rate": 2}, "error_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": True}, "latency_ms"),
        ({"read_quota_per_user": -1}, "read_quota_per_user"),
        ({"require_auth": "yes"}, "require_auth"),
        ([1, 2], "a JSON object"),
    ],
)
def test_a_knob_it_cannot_take_is_refused_naming_it_and_nothing_changes(
    server: EmulatorServer, http: httpx.Client, body: object, told: str
) -> None:
    before = http.get("/_emulator/knobs").json()

    refused = http.patch("/_emulator/knobs", json=body)

    assert refused.status_code == 400
    assert told in refused.json()["error"]
    assert http.get("/_emulator/knobs").json() == before


def test_a_fault_injected_through_its_own_address_answers_the_next_matching_call(
    server: EmulatorServer, http: httpx.Client
) -> None:
    book = new_book(http)

    injected = http.post(
        "/_emulator/faults",
        json={"status": 429, "count": 2, "method": "GET", "path_contains": book},
    )

    assert injected.status_code == 200
    answers = [http.get(f"/v4/spreadsheets/{book}") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [429, 429, 200]
    # As Google's own quota error: its status, its words and when to retry.
    assert answers[0].json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert answers[0].json()["error"]["message"].startswith("Quota exceeded")
    assert answers[0].headers["Retry-After"] == "1"


def test_a_fault_can_let_the_first_matching_calls_through_and_answer_the_next(
    server: EmulatorServer, http: httpx.Client
) -> None:
    book = new_book(http)

    http.post("/_emulator/faults", json={"status": 503, "skip": 2, "method": "GET"})

    answers = [http.get(f"/v4/spreadsheets/{book}") for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 503, 200]


def test_a_write_whose_client_stopped_waiting_still_lands(
    server: EmulatorServer, http: httpx.Client
) -> None:
    # As on the service: a timeout tells the client nothing of whether the
    # call was carried out.
    book = new_book(http)
    http.patch("/_emulator/knobs", json={"latency_ms": 600})

    with pytest.raises(httpx.TimeoutException):
        http.put(
            f"/v4/spreadsheets/{book}/values/Sheet1!A1",
            params={"valueInputOption": "RAW"},
            json={"values": [["late"]]},
            timeout=0.2,
        )

    time.sleep(0.8)
    http.patch("/_emulator/knobs", json={"latency_ms": 0})
    shown = http.get(f"/v4/spreadsheets/{book}/values/Sheet1!A1").json()
    assert shown["values"] == [["late"]]


def test_faults_waiting_are_listed_and_cleared_through_the_same_address(
    server: EmulatorServer, http: httpx.Client
) -> None:
    book = new_book(http)
    http.post("/_emulator/faults", json={"status": 500, "count": 26})
    http.post("/_emulator/faults", json={"status": 503, "method": "POST"})

    listed = http.get("/_emulator/faults")
    http.get(f"/v4/spreadsheets/{book}")  # takes one of the 500s
    cleared = http.delete("/_emulator/faults")

    assert [(f["status"], f["count"]) for f in listed.json()] == [(500, 26), (503, 1)]
    assert [(f["status"], f["count"]) for f in cleared.json()] == [(500, 25), (503, 1)]
    assert http.get("/_emulator/faults").json() == []
    assert http.get(f"/v4/spreadsheets/{book}").status_code == 200


def test_a_quota_of_none_answers_every_call_with_googles_quota_error(
    server: EmulatorServer, http: httpx.Client
) -> None:
    book = new_book(http)

    http.patch("/_emulator/knobs", json={"read_quota_per_user": 0})
    refused = http.get(f"/v4/spreadsheets/{book}")

    assert refused.status_code == 429
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_a_fault_for_a_method_the_api_has_not_is_refused(
    server: EmulatorServer, http: httpx.Client
) -> None:
    refused = http.post("/_emulator/faults", json={"status": 503, "method": "FOO"})

    assert refused.status_code == 400 and "method" in refused.json()["error"]


def test_rows_inserted_and_filled_in_one_batch_keep_the_rows_below(
    http: httpx.Client,
) -> None:
    book = new_book(http)
    put(http, book, "A1:B2", [["ID", "Born"], [1, 43831]])
    cell = {"userEnteredFormat": {"numberFormat": {"type": "DATE"}}}

    answer = http.post(
        f"/v4/spreadsheets/{book}:batchUpdate",
        json={
            "requests": [
                {
                    "insertDimension": {
                        "range": {
                            "sheetId": 0,
                            "dimension": "ROWS",
                            "startIndex": 1,
                            "endIndex": 2,
                        }
                    }
                },
                {
                    "updateCells": {
                        "start": {"sheetId": 0, "rowIndex": 1, "columnIndex": 0},
                        "rows": [
                            {
                                "values": [
                                    {"userEnteredValue": {"numberValue": 2}},
                                    {
                                        "userEnteredValue": {"numberValue": 43832},
                                        **cell,
                                    },
                                    {"userEnteredValue": {"stringValue": "007"}},
                                ]
                            }
                        ],
                        "fields": "userEnteredValue,userEnteredFormat.numberFormat",
                    }
                },
            ]
        },
    )

    assert answer.status_code == 200, answer.text
    assert _shown(http, book, "A1:C3", "FORMATTED_VALUE") == [
        ["ID", "Born"],
        ["2", "1/2/2020", "007"],
        ["1", "43831"],
    ]
