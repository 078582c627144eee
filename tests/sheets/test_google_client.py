"""The Google Sheets client on the emulator: errors, retries, auth, ranges, serials."""

from __future__ import annotations

import http.server
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sheetbridge.config import Settings
from sheetbridge.sheets.base import TabChanges
from sheetbridge.sheets.errors import (
    SheetChanged,
    SheetError,
    SheetInvalidRequest,
    SheetNotFound,
    SheetPermissionDenied,
    SheetRateLimited,
    SheetTransientError,
)
from sheetbridge.sheets.google import (
    GoogleSheetsBackend,
    StaticToken,
    client_from_settings,
    oauth_user_token,
    serial_to_date,
    serial_to_datetime,
    service_account_token,
    to_serial,
)
from sheetbridge.sheets.ranges import a1_range, parse_range, quote_title
from sheetbridge.testing.emulator import EmulatorServer, Knobs
from sheetbridge.testing.harness import GoogleHarness
from tests.support.server import free_port
from tests.support.sheets import write_until_done


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(port=free_port()) as server:
        yield server


@pytest.fixture
def harness(emulator: EmulatorServer) -> GoogleHarness:
    return GoogleHarness(emulator)


# -- ranges and serials -----------------------------------------------------------


def test_titles_are_quoted_with_doubled_apostrophes() -> None:
    assert quote_title("Jon's Data") == "'Jon''s Data'"
    assert a1_range("Jon's Data", 1, 1, 1000, 26) == "'Jon''s Data'!A1:Z1000"
    assert a1_range("CRM26", 2, 3) == "'CRM26'!C2"


@pytest.mark.parametrize(
    ("echoed", "title"),
    [
        ("'Jon''s Data'!A1:Z1000", "Jon's Data"),
        ("Sheet1!A1:D4", "Sheet1"),
        ("'CRM26'!A2:Z", "CRM26"),
        ("'Q1 2025'!A1", "Q1 2025"),
        ("'a!b'!B2", "a!b"),
    ],
)
def test_ranges_echoed_by_the_service_parse(echoed: str, title: str) -> None:
    assert parse_range(echoed).title == title


def test_open_ended_ranges_bound_to_the_grid() -> None:
    span = parse_range("'T'!A2:Z").cells
    assert span is not None and span.bounded(1000, 26) == (2, 1, 1000, 26)


def test_serial_numbers_convert_to_dates_and_datetimes_in_the_sheet_zone() -> None:
    assert serial_to_date(43831) == date(2020, 1, 1)
    paris = ZoneInfo("Europe/Paris")
    assert serial_to_datetime(43831.5, paris) == datetime(2020, 1, 1, 12, tzinfo=paris)
    assert to_serial(date(2020, 1, 1)) == 43831
    assert to_serial(datetime(2020, 1, 1, 11, tzinfo=UTC), paris) == 43831.5


# -- errors ---------------------------------------------------------------------------


def test_missing_spreadsheet_is_not_found_naming_it(harness: GoogleHarness) -> None:
    backend = harness.backend("no-such-id")
    with pytest.raises(SheetNotFound, match="no-such-id") as info:
        backend.read_tabs(["T"])
    assert not info.value.transient


def test_unshared_spreadsheet_says_whom_to_share_it_with(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    harness.state.share(book.spreadsheet_id, "someone@example.com")
    backend = harness.backend(book, tokens=StaticToken("t", "robot@proj.iam.example"))
    with pytest.raises(
        SheetPermissionDenied, match="share the spreadsheet with robot@"
    ):
        backend.read_tabs(["T"])
    assert harness.state.calls("GET") == 1  # not retried


def test_unparsable_range_becomes_not_found_naming_the_tab(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    client = harness.client()
    with pytest.raises(SheetNotFound) as info:
        client.batch_get(book.spreadsheet_id, ["'Gone Tab'!A1:B2"])
    assert info.value.tab == "Gone Tab"
    assert "Gone Tab" in str(info.value)


def test_invalid_request_is_permanent(harness: GoogleHarness) -> None:
    book = harness.spreadsheet()
    with pytest.raises(SheetInvalidRequest, match="exceeds grid limits"):
        harness.client().batch_update_values(
            book.spreadsheet_id, [{"range": "'Sheet1'!A1001", "values": [["x"]]}]
        )


def test_server_errors_are_retried_then_succeed(harness: GoogleHarness) -> None:
    book = harness.spreadsheet()
    retries: list[tuple[int, float, SheetError]] = []
    backend = harness.backend(book, on_retry=lambda *args: retries.append(args))
    harness.state.inject(503, count=1, method="GET")
    harness.state.inject(500, count=1, method="GET")
    assert backend.read_tabs(["Sheet1"]) == {
        "Sheet1": backend.read_tabs(["Sheet1"])["Sheet1"]
    }
    assert [attempt for attempt, _, _ in retries] == [1, 2]
    assert all(isinstance(error, SheetTransientError) for _, _, error in retries)


def test_a_retry_waits_a_second_at_a_time_telling_what_is_left(
    harness: GoogleHarness,
) -> None:
    # Each step is a safe point: a sync asked to stop ends its wait at once.
    book = harness.spreadsheet()
    told: list[float] = []
    slept: list[float] = []
    backend = harness.backend(
        book,
        backoff_base_s=3.5,
        backoff_max_s=3.5,
        on_retry=lambda attempt, delay_s, error: told.append(delay_s),
        sleep=slept.append,
    )
    harness.state.inject(503, count=1, method="GET")

    backend.read_tabs(["Sheet1"])

    assert len(told) == len(slept) == math.ceil(told[0]) > 1
    assert sum(slept) == pytest.approx(told[0])
    assert all(0 < step <= 1.0 for step in slept)
    assert told == pytest.approx([told[0] - n for n in range(len(told))])


def test_a_write_cut_short_is_not_sent_again_where_rows_may_have_moved(
    harness: GoogleHarness,
) -> None:
    # A person sorting the tab while a write waits to be tried again would
    # have its values land in other rows: the write goes back to the sync,
    # which reads the sheet again, never out again as it was.
    book = harness.spreadsheet()
    setup = harness.backend(book)
    setup.write({"Sheet1": TabChanges(cells={(1, 1): "ID", (1, 2): "Name"})})
    setup.write({"Sheet1": TabChanges(append=[[n, f"name {n}"] for n in (1, 2, 3)])})
    sheet = next(tab for tab in book.sheets if tab.title == "Sheet1")

    def sort_meanwhile(_seconds: float) -> None:
        sheet.rows[1:] = sheet.rows[:0:-1]  # Z to A, by the emulator's hand

    backend = harness.backend(book, sleep=sort_meanwhile)
    version = backend.read_tabs(["Sheet1"])["Sheet1"].version  # type: ignore[union-attr]
    cut = f"{book.spreadsheet_id}:batchUpdate"
    harness.state.inject(503, count=1, method="POST", path_contains=cut)
    writes = harness.state.calls("POST")

    with pytest.raises(SheetChanged) as info:
        backend.write(
            {
                "Sheet1": TabChanges(
                    cells={(2, 2): "one", (4, 2): "three"}, delete_rows=[3]
                )
            },
            expected_version=version,
        )

    assert info.value.transient
    assert "cut short" in str(info.value) and "read" in str(info.value)
    assert harness.state.calls("POST") - writes <= 2, "nothing sent again"
    rows = backend.read_tabs(["Sheet1"])["Sheet1"].rows  # type: ignore[union-attr]
    named = {row[0]: row[1] for row in rows[1:]}
    assert all(named[n] in (f"name {n}", {1: "one", 3: "three"}.get(n)) for n in named)


def test_cells_written_into_rows_there_clear_skip_and_keep_formats_as_told(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book)
    backend.write({"T": TabChanges(cells={(1, 1): "ID", (1, 2): "A", (1, 3): "B"})})
    backend.write(
        {"T": TabChanges(append=[[n, f"a{n}", date(2020, 1, n)] for n in (1, 2, 3)])}
    )
    sheet = book.sheet_by_title("T")
    assert sheet is not None
    dated = sheet.cell(2, 3)

    backend.write(
        {
            "T": TabChanges(
                cells={
                    (2, 2): None,  # cleared
                    (3, 2): "new a2",
                    (4, 1): 30,  # columns 1 and 3 of row 4; 2 is left as is
                    (4, 3): date(2021, 5, 6),
                    (2, 3): date(2022, 7, 8),
                }
            )
        }
    )

    rows = backend.read_tabs(["T"])["T"].rows  # type: ignore[union-attr]
    assert rows[1][:2] == [1, None]
    assert rows[2][:2] == [2, "new a2"]
    assert rows[3][:2] == [30, "a3"]
    # A date written where one was keeps the cell's date format.
    assert sheet.cell(2, 3).kind == dated.kind == "DATE"  # type: ignore[union-attr]
    assert [row[2] for row in rows[1:]] == [
        to_serial(date(2022, 7, 8)),
        to_serial(date(2020, 1, 2)),
        to_serial(date(2021, 5, 6)),
    ]


@pytest.mark.parametrize("checked", [True, False])
def test_a_tab_deleted_between_the_read_and_the_write_is_a_change_to_read_again(
    harness: GoogleHarness, checked: bool
) -> None:
    # A person deleting the tab while a sync runs: the sync reads the sheet
    # again (and writes the tab anew), it does not fail for good.
    book = harness.spreadsheet()
    setup = harness.backend(book)
    setup.write({"Customers": TabChanges(cells={(1, 1): "ID", (2, 1): 1})})
    backend = harness.backend(book)
    tab = backend.read_tabs(["Customers"])["Customers"]
    assert tab is not None
    book.sheets = [sheet for sheet in book.sheets if sheet.title != "Customers"]

    with pytest.raises(SheetChanged) as info:
        backend.write(
            {"Customers": TabChanges(cells={(2, 2): "x"})},
            expected_version=tab.version if checked else None,
        )

    assert info.value.transient
    assert "'Customers'" in str(info.value) and "read" in str(info.value)


def test_a_tab_read_but_not_written_deleted_before_the_write_is_a_change_too(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    setup = harness.backend(book)
    setup.write({"Customers": TabChanges(cells={(1, 1): "ID"})})
    setup.write({"Policies": TabChanges(cells={(1, 1): "ID"})})
    backend = harness.backend(book)
    tabs = backend.read_tabs(["Customers", "Policies"])
    version = tabs["Policies"].version  # type: ignore[union-attr]
    book.sheets = [sheet for sheet in book.sheets if sheet.title != "Customers"]

    with pytest.raises(SheetChanged) as info:
        backend.write(
            {"Policies": TabChanges(cells={(2, 1): 1})}, expected_version=version
        )

    assert info.value.transient and "'Customers'" in str(info.value)


def test_a_write_that_fails_takes_back_the_tabs_it_added(
    harness: GoogleHarness,
) -> None:
    # A tab added for a write that then fails would be left empty: the next
    # sync would read it as a tab whose rows were all deleted, not as one to
    # write anew.
    book = harness.spreadsheet()
    harness.backend(book).write({"Customers": TabChanges(cells={(1, 1): "ID"})})
    backend = harness.backend(book)
    tabs = backend.read_tabs(["Customers", "Policies"])
    assert tabs["Policies"] is None
    version = tabs["Customers"].version  # type: ignore[union-attr]
    # The tab is added, and the call writing both tabs is cut short.
    harness.state.inject(503, method="POST", path_contains=":batchUpdate", skip=1)

    with pytest.raises(SheetChanged):
        backend.write(
            {
                "Customers": TabChanges(cells={(1, 2): "Name"}),
                "Policies": TabChanges(cells={(1, 1): "ID"}, append=[[1], [2]]),
            },
            expected_version=version,
        )

    assert [sheet.title for sheet in book.sheets if sheet.title == "Policies"] == []


def test_persistent_server_errors_give_up_as_transient(harness: GoogleHarness) -> None:
    book = harness.spreadsheet()
    backend = harness.backend(book, max_retries=2)
    harness.state.inject(503, count=10)
    with pytest.raises(SheetTransientError) as info:
        backend.read_tabs(["Sheet1"])
    assert info.value.transient
    assert harness.state.calls("GET") == 3


def test_rate_limit_is_transient_and_retry_waits_retry_after(
    harness: GoogleHarness,
) -> None:
    book = harness.spreadsheet()
    harness.state.knobs.read_quota_per_user = 1
    harness.client().get_spreadsheet(book.spreadsheet_id)
    with pytest.raises(SheetRateLimited) as info:
        harness.client(max_retries=0).get_spreadsheet(book.spreadsheet_id)
    assert info.value.transient
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    slept: list[float] = []
    with pytest.raises(SheetRateLimited):
        harness.client(max_retries=1, sleep=slept.append).get_spreadsheet(
            book.spreadsheet_id
        )
    assert slept and sum(slept) >= info.value.retry_after - 1


def test_random_failures_knob_is_survived_by_retries(harness: GoogleHarness) -> None:
    harness.state.knobs.error_rate = 0.3
    harness.state.rng.seed(7)
    backend = harness.backend(max_retries=8)
    cut = sum(
        write_until_done(backend, {"T": TabChanges(append=[[n]])}) for n in range(10)
    )
    harness.state.knobs.error_rate = 0.0
    assert cut > 0
    data = backend.read_tabs(["T"])["T"]
    assert data is not None and data.rows == [[n] for n in range(10)]


# -- credentials ----------------------------------------------------------------------


def _key_file(tmp_path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "local-test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "sync-bot@local-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    return path


def test_service_account_key_gets_a_token_from_the_local_endpoint(
    harness: GoogleHarness, tmp_path: Path
) -> None:
    harness.state.knobs.require_auth = True
    tokens = service_account_token(
        _key_file(tmp_path, f"{harness.server.base_url}/token")
    )
    assert tokens.principal == "sync-bot@local-test.iam.gserviceaccount.com"
    book = harness.spreadsheet()
    harness.state.share(book.spreadsheet_id, tokens.principal)
    backend = harness.backend(book, tokens=tokens)
    backend.write({"T": TabChanges(cells={(1, 1): "ok"})})
    data = backend.read_tabs(["T"])["T"]
    assert data is not None and data.rows == [["ok"]]
    assert harness.state.log[-1].user == tokens.principal


def test_oauth_user_token_file_refreshes_locally(
    harness: GoogleHarness, tmp_path: Path
) -> None:
    harness.state.knobs.require_auth = True
    path = tmp_path / "user.json"
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "desktop-app",
                "client_secret": "s",
                "refresh_token": "r",
                "token_uri": f"{harness.server.base_url}/token",
            }
        )
    )
    backend = harness.backend(tokens=oauth_user_token(path))
    assert backend.read_tabs(["Sheet1"])["Sheet1"] is not None


def test_wrong_static_token_is_permission_denied(harness: GoogleHarness) -> None:
    harness.state.knobs = Knobs(required_token="right")
    book = harness.spreadsheet()
    with pytest.raises(SheetPermissionDenied, match="credentials"):
        harness.backend(book, tokens=StaticToken("wrong")).read_tabs(["T"])
    ok = harness.backend(book, tokens=StaticToken("right"))
    assert ok.read_tabs(["T"]) == {"T": None}


def test_backend_read_is_two_calls_and_a_write_after_it_reuses_its_titles(
    harness: GoogleHarness,
) -> None:
    backend = harness.backend()
    backend.write({"T": TabChanges(cells={(1, 1): "ID", (2, 1): 1, (3, 1): 2})})
    tabs = backend.read_tabs(["T"])
    assert backend.client.calls == {
        "spreadsheets.get": 2,
        "spreadsheets.batchUpdate": 2,  # the tab added, then its cells
        "values.batchGet": 1,
    }
    backend.client.calls.clear()
    backend.write(
        {"T": TabChanges(cells={(2, 2): "x"}, append=[[3]], delete_rows=[3])},
        expected_version=tabs["T"].version if tabs["T"] else None,
    )
    assert backend.client.calls == {
        "values.batchGet": 1,
        "spreadsheets.batchUpdate": 1,
    }


def test_backend_location_names_the_spreadsheet(harness: GoogleHarness) -> None:
    backend = harness.backend("abc")
    assert isinstance(backend, GoogleSheetsBackend)
    assert backend.location == "Google spreadsheet abc"


def test_clients_made_for_each_sync_share_one_token_and_one_connection_pool(
    harness: GoogleHarness, tmp_path: Path
) -> None:
    harness.state.knobs.require_auth = True
    settings = Settings(
        data_dir=tmp_path,
        google_sheets_base_url=harness.server.base_url,
        google_credentials_file=_key_file(tmp_path, f"{harness.server.base_url}/token"),
    )
    book = harness.spreadsheet()
    harness.state.share(
        book.spreadsheet_id, "sync-bot@local-test.iam.gserviceaccount.com"
    )
    clients = [client_from_settings(settings) for _ in range(3)]
    for client in clients:
        backend = GoogleSheetsBackend(client, book.spreadsheet_id)
        assert backend.read_tabs(["Sheet1"])["Sheet1"] is not None
        client.close()  # what a finished sync does; the pool stays open
    assert len(harness.state.tokens) == 1
    assert clients[0].http is clients[2].http


def test_a_replaced_key_file_is_read_again(
    harness: GoogleHarness, tmp_path: Path
) -> None:
    token_uri = f"{harness.server.base_url}/token"
    settings = Settings(
        data_dir=tmp_path,
        google_sheets_base_url=harness.server.base_url,
        google_credentials_file=_key_file(tmp_path, token_uri),
    )
    first = client_from_settings(settings).tokens
    assert client_from_settings(settings).tokens is first
    key = _key_file(tmp_path, token_uri)
    os.utime(key, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert client_from_settings(settings).tokens is not first


def test_syncs_at_once_reuse_their_connections_to_the_api(tmp_path: Path) -> None:
    """As many syncs as workers call the API at once, again and again: after
    the first round every call goes over a connection already open (a new
    one costs a TLS set-up with Google)."""
    opened: list[int] = []
    workers = Settings.model_fields["worker_concurrency"].default
    # Every call waits for all of its round's calls to arrive: each round has
    # them all in flight at once, however slowly a busy machine starts them.
    in_flight = threading.Barrier(workers, timeout=30)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep connections open

        def setup(self) -> None:
            opened.append(1)
            super().setup()

        def do_GET(self) -> None:
            in_flight.wait()
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(
        data_dir=tmp_path,
        google_sheets_base_url=f"http://127.0.0.1:{server.server_port}",
        google_static_token="test-token",
    )
    assert settings.worker_concurrency == workers
    http_pool = client_from_settings(settings).http

    def one_round() -> None:
        with ThreadPoolExecutor(workers) as calls:
            answers = list(calls.map(lambda _: http_pool.get("/v4/ok"), range(workers)))
        assert all(answer.status_code == 200 for answer in answers)

    try:
        one_round()
        after_first = len(opened)
        one_round()
        one_round()
    finally:
        server.shutdown()
        http_pool.close()
    assert after_first == workers
    assert len(opened) == after_first
