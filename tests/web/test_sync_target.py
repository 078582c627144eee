"""Where a book syncs: the sync target endpoints, and what each server allows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from sheetbridge.insurance.models import User
from sheetbridge.insurance.sync_jobs import TO_SHEET
from sheetbridge.queue.worker import WorkerPool
from sheetbridge.sync.models import SyncTarget
from sheetbridge.web.deps import Runtime
from tests.conftest import bearer

TARGET = "/api/insurance/sync/target"
SPREADSHEET = "1AbCdEfGhIjKlMnOpQrStUvWxYz"
# The fields each kind of credentials file must give (no real key: nothing
# here is ever sent to Google).
SERVICE_ACCOUNT_KEY = {
    "type": "service_account",
    "client_email": "sync@agency.test",
    "private_key": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n",
    "token_uri": "https://oauth2.googleapis.com/token",
}
OAUTH_USER = {
    "type": "authorized_user",
    "client_id": "agency-app",
    "client_secret": "not-a-secret",
    "refresh_token": "refresh",
}


@pytest.fixture
def google_not_set_up(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    """No credentials of any kind and Google's own API address: the defaults."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    settings = runtime.settings
    assert settings.google_credentials_file is None
    assert settings.google_oauth_token_file is None
    assert settings.google_static_token == ""
    assert settings.google_sheets_base_url == "https://sheets.googleapis.com"


def alices_book_on_google(runtime: Runtime) -> User:
    """Alice, her book set to sync with SPREADSHEET on Google (as a server
    that had Google set up left it)."""
    alice = user_named(runtime, "alice")
    runtime.sync.target_for(alice)
    with runtime.db.session() as session:
        session.execute(
            update(SyncTarget)
            .where(SyncTarget.user_id == alice.id)
            .values(backend="google", location=SPREADSHEET)
        )
    return alice


def user_named(runtime: Runtime, username: str) -> User:
    with runtime.db.read_session() as session:
        return session.scalars(select(User).where(User.username == username)).one()


@pytest.mark.usefixtures("google_not_set_up")
def test_google_is_refused_at_once_where_the_server_has_no_google_set_up(
    alice: TestClient,
) -> None:
    answer = alice.patch(
        TARGET, json={"backend": "google", "spreadsheet_id": SPREADSHEET}
    )

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["field"] == "backend"
    assert error["msg"].startswith("Google Sheets is not set up on this server")
    assert "SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE" in error["msg"]
    assert alice.get(TARGET).json()["backend"] == "xlsx"


@pytest.mark.usefixtures("google_not_set_up")
def test_a_sync_of_a_google_book_fails_at_once_where_google_is_not_set_up(
    runtime: Runtime,
) -> None:
    alice = alices_book_on_google(runtime)

    queued = runtime.sync.enqueue(alice, TO_SHEET)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(queued.job_id)
    assert (job.state, job.attempts) == ("failed", 1)
    assert job.error is not None
    assert "Google Sheets is not set up on this server" in job.error


@pytest.mark.parametrize(
    "setting", ["key file", "key file by Google's variable", "oauth file", "token"]
)
def test_google_is_taken_where_the_server_has_credentials(
    alice: TestClient,
    runtime: Runtime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps(SERVICE_ACCOUNT_KEY | OAUTH_USER))
    if setting == "key file":
        monkeypatch.setattr(runtime.settings, "google_credentials_file", key_file)
    elif setting == "key file by Google's variable":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    elif setting == "oauth file":
        monkeypatch.setattr(runtime.settings, "google_oauth_token_file", key_file)
    else:
        monkeypatch.setattr(runtime.settings, "google_static_token", "emulator")

    answer = alice.patch(
        TARGET, json={"backend": "google", "spreadsheet_id": SPREADSHEET}
    )

    assert answer.status_code == 200, answer.text
    assert (answer.json()["backend"], answer.json()["location"]) == (
        "google",
        SPREADSHEET,
    )


BROKEN_FILES = {
    "missing": (None, "does not exist"),
    "a folder": ("folder", "cannot be read (Is a directory)"),
    "not JSON": (b"type: service_account\n", "is not JSON"),
    "not UTF-8": (b"\xff\xfe{}", "is not JSON"),
    "a list": (json.dumps([SERVICE_ACCOUNT_KEY]).encode(), "is not a"),
}


@pytest.fixture(params=sorted(BROKEN_FILES))
def broken_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A credentials file that cannot serve, and what is wrong with it."""
    content, problem = BROKEN_FILES[request.param]
    path = tmp_path / "credentials.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    return path, problem


def set_credentials(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, setting: str, path: Path
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    if setting == "GOOGLE_APPLICATION_CREDENTIALS":
        monkeypatch.setenv(setting, str(path))
    elif setting == "SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE":
        monkeypatch.setattr(runtime.settings, "google_credentials_file", path)
    else:
        monkeypatch.setattr(runtime.settings, "google_oauth_token_file", path)


CREDENTIAL_SETTINGS = [
    "SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "SHEETBRIDGE_GOOGLE_OAUTH_TOKEN_FILE",
]


@pytest.mark.parametrize("setting", CREDENTIAL_SETTINGS)
def test_google_is_refused_naming_the_setting_whose_file_cannot_serve(
    alice: TestClient,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    broken_file: tuple[Path, str],
    setting: str,
) -> None:
    path, problem = broken_file
    set_credentials(runtime, monkeypatch, setting, path)

    answer = alice.patch(
        TARGET, json={"backend": "google", "spreadsheet_id": SPREADSHEET}
    )

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["field"] == "backend"
    assert error["msg"].startswith(
        f"Google Sheets cannot be used on this server: the file {setting} names "
        f"{problem}"
    )
    assert alice.get(TARGET).json()["backend"] == "xlsx"


@pytest.mark.parametrize(
    ("setting", "fields", "kind"),
    [
        (
            "SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE",
            OAUTH_USER,
            "a service-account key (it has no client_email, private_key, token_uri)",
        ),
        (
            "SHEETBRIDGE_GOOGLE_OAUTH_TOKEN_FILE",
            SERVICE_ACCOUNT_KEY,
            "an OAuth authorized-user file (it has no client_id, client_secret, "
            "refresh_token)",
        ),
    ],
)
def test_google_is_refused_where_the_credentials_file_is_of_the_wrong_kind(
    alice: TestClient,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    setting: str,
    fields: dict[str, str],
    kind: str,
) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(fields))
    set_credentials(runtime, monkeypatch, setting, path)

    answer = alice.patch(
        TARGET, json={"backend": "google", "spreadsheet_id": SPREADSHEET}
    )

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["msg"] == (
        f"Google Sheets cannot be used on this server: the file {setting} names "
        f"is not {kind}; an admin must correct the setting or the file"
    )


def test_a_sync_of_a_google_book_fails_at_once_where_its_key_file_is_missing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    alice = alices_book_on_google(runtime)
    set_credentials(
        runtime, monkeypatch, CREDENTIAL_SETTINGS[0], tmp_path / "gone.json"
    )

    queued = runtime.sync.enqueue(alice, TO_SHEET)
    WorkerPool(runtime.queue, runtime.sync.handlers).run_until_empty()

    job = runtime.queue.get(queued.job_id)
    assert (job.state, job.attempts) == ("failed", 1)
    assert job.error is not None
    assert (
        "the file SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE names does not exist" in job.error
    )


def test_google_is_taken_where_the_server_talks_to_an_emulator(
    alice: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(
        runtime.settings, "google_sheets_base_url", "http://127.0.0.1:18799"
    )

    answer = alice.patch(
        TARGET, json={"backend": "google", "spreadsheet_id": SPREADSHEET}
    )

    assert answer.status_code == 200, answer.text


@pytest.fixture
def google_set_up(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    """A server that may sync with Google (the emulator's token); none is called."""
    monkeypatch.setattr(runtime.settings, "google_static_token", "emulator")


def point_at(
    client: TestClient, token: str, spreadsheet_id: str, user_id: int | None = None
) -> tuple[int, dict[str, Any]]:
    answer = client.patch(
        TARGET,
        params={} if user_id is None else {"user_id": user_id},
        json={"backend": "google", "spreadsheet_id": spreadsheet_id},
        headers=bearer(token),
    )
    return answer.status_code, answer.json()


@pytest.mark.usefixtures("google_set_up")
def test_an_agent_cannot_take_another_users_spreadsheet_and_is_not_told_whose(
    client: TestClient, tokens: dict[str, str]
) -> None:
    assert point_at(client, tokens["bob"], SPREADSHEET)[0] == 200

    status, answer = point_at(client, tokens["alice"], SPREADSHEET)

    assert status == 422, answer
    (error,) = answer["detail"]
    assert error["field"] == "spreadsheet_id"
    assert "already the sheet of another user's book" in error["msg"]
    assert "bob" not in error["msg"]
    now = client.get(TARGET, headers=bearer(tokens["alice"])).json()
    assert now["backend"] == "xlsx"


@pytest.mark.usefixtures("google_set_up")
def test_an_admin_is_told_whose_book_already_has_the_spreadsheet(
    client: TestClient, runtime: Runtime, tokens: dict[str, str]
) -> None:
    assert point_at(client, tokens["bob"], SPREADSHEET)[0] == 200
    alice = user_named(runtime, "alice")

    refused = [
        point_at(client, tokens["admin"], SPREADSHEET),
        point_at(client, tokens["admin"], SPREADSHEET, user_id=alice.id),
    ]

    for status, answer in refused:
        assert status == 422, answer
        (error,) = answer["detail"]
        assert error["field"] == "spreadsheet_id"
        assert "already the sheet of bob's book" in error["msg"]


@pytest.mark.usefixtures("google_set_up")
def test_a_book_keeps_its_own_spreadsheet_and_takes_one_another_book_left(
    client: TestClient, tokens: dict[str, str]
) -> None:
    assert point_at(client, tokens["bob"], SPREADSHEET)[0] == 200
    again = point_at(client, tokens["bob"], SPREADSHEET)
    client.patch(TARGET, json={"backend": "xlsx"}, headers=bearer(tokens["bob"]))

    taken = point_at(client, tokens["alice"], SPREADSHEET)

    assert again[0] == 200, again[1]
    assert taken[0] == 200, taken[1]
    assert taken[1]["location"] == SPREADSHEET


def test_an_agent_is_told_only_admins_see_or_set_others_sheets_as_asked(
    alice: TestClient, runtime: Runtime
) -> None:
    bob = user_named(runtime, "bob")

    seen = alice.get(TARGET, params={"user_id": bob.id})
    changed = alice.patch(
        TARGET, params={"user_id": bob.id}, json={"delete_mode": "delete"}
    )

    assert (seen.status_code, seen.json()["detail"]) == (
        403,
        "only admins see others' sheets",
    )
    assert (changed.status_code, changed.json()["detail"]) == (
        403,
        "only admins set others' sheets",
    )


@pytest.mark.usefixtures("google_set_up")
@pytest.mark.parametrize(
    "pasted",
    [
        f"https://docs.google.com/spreadsheets/d/{SPREADSHEET}/edit#gid=0",
        f"https://docs.google.com/spreadsheets/d/{SPREADSHEET}",
        f"  docs.google.com/spreadsheets/u/1/d/{SPREADSHEET}/edit?usp=sharing ",
    ],
    ids=["edit-link", "bare-link", "no-scheme-and-spaces"],
)
def test_a_spreadsheets_address_pasted_for_its_id_is_taken_as_its_id(
    client: TestClient, tokens: dict[str, str], pasted: str
) -> None:
    code, target = point_at(client, tokens["alice"], pasted)

    assert code == 200, target
    assert target["location"] == SPREADSHEET


@pytest.mark.usefixtures("google_set_up")
def test_an_address_that_is_not_a_spreadsheets_says_what_to_paste(
    client: TestClient, tokens: dict[str, str]
) -> None:
    code, answer = point_at(
        client, tokens["alice"], f"https://drive.google.com/file/d/{SPREADSHEET}/view"
    )

    assert code == 422
    assert answer["detail"][0]["field"] == "spreadsheet_id"
    assert "after /d/" in answer["detail"][0]["msg"]
