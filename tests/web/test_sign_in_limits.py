"""Wrong passwords: after a few, the sign-in form holds off further tries for a
while, naming how long, so that passwords cannot be guessed at speed."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from sheetbridge import clock
from sheetbridge.web import pages
from sheetbridge.web.deps import Runtime
from sheetbridge.web.security import (
    SignInLimits,
    checked_wrong,
    count_sign_in,
    held_off,
)

PASSWORDS = {"alice": "alice-demo", "bob": "bob-demo"}


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The app's clock, which a test moves on by changing ``now[0]``."""
    moment = [datetime(2026, 12, 6, 9, 0, tzinfo=UTC)]
    monkeypatch.setattr(clock, "now", lambda: moment[0])
    return moment


def sign_in(client: TestClient, username: str, password: str) -> httpx.Response:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf": csrf[1]},
        follow_redirects=False,
    )


def error_on(page: httpx.Response) -> str:
    found = re.search(r'role="alert"[^>]*>\s*([^<]+?)\s*<', page.text)
    assert found is not None, page.text
    return found[1]


def test_wrong_passwords_for_a_user_hold_off_their_next_tries_saying_how_long(
    client: TestClient, now: list[datetime]
) -> None:
    for _ in range(5):
        assert sign_in(client, "alice", "guess").status_code == 400

    held = sign_in(client, "alice", PASSWORDS["alice"])

    assert held.status_code == 429
    assert held.headers["retry-after"] == "900"
    assert error_on(held) == (
        "Too many wrong passwords for alice: try again in 15 minutes."
    )
    # The first wrong try leaves the 15 minutes: one more try is let through.
    now[0] += timedelta(minutes=15, seconds=1)
    assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303


def test_the_hold_off_counts_from_the_first_wrong_try_of_the_last_15_minutes(
    client: TestClient, now: list[datetime]
) -> None:
    for _ in range(5):
        sign_in(client, "alice", "guess")
        now[0] += timedelta(minutes=2)

    held = sign_in(client, "alice", "guess")

    assert held.status_code == 429
    assert held.headers["retry-after"] == str(15 * 60 - 10 * 60)
    assert "try again in 5 minutes" in error_on(held)


def test_a_right_password_clears_the_wrong_ones_before_it(
    client: TestClient, now: list[datetime]
) -> None:
    for _ in range(4):
        sign_in(client, "alice", "guess")
    assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303

    for _ in range(4):
        assert sign_in(client, "alice", "guess").status_code == 400


def test_one_users_wrong_passwords_hold_off_no_one_else(
    client: TestClient, now: list[datetime]
) -> None:
    for _ in range(5):
        sign_in(client, "alice", "guess")

    assert sign_in(client, "bob", PASSWORDS["bob"]).status_code == 303


def test_many_users_tried_from_one_address_hold_off_that_address(
    client: TestClient, runtime: Runtime, now: list[datetime]
) -> None:
    runtime.settings.sign_in_tries_per_address = 6
    for name in ("ann", "ben", "cal", "dee", "eve", "fay"):
        assert sign_in(client, name, "guess").status_code == 400

    held = sign_in(client, "bob", PASSWORDS["bob"])

    assert held.status_code == 429
    assert error_on(held) == (
        "Too many wrong sign-ins from this address: try again in 15 minutes."
    )
    assert int(held.headers["retry-after"]) == 900


def test_a_user_name_with_a_nul_character_is_a_wrong_sign_in_counted_as_any(
    client: TestClient, now: list[datetime]
) -> None:
    # PostgreSQL keeps no NUL in text: the name is still counted and refused.
    for _ in range(5):
        assert sign_in(client, "al\x00ice", "guess").status_code == 400

    held = sign_in(client, "al\x00ice", PASSWORDS["alice"])

    assert held.status_code == 429
    assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303


def test_a_user_name_in_other_letter_case_or_spacing_counts_as_the_same(
    client: TestClient, now: list[datetime]
) -> None:
    for name in ("alice", "Alice", " alice", "ALICE ", "alice"):
        sign_in(client, name, "guess")

    assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 429


def test_wrong_passwords_sent_all_at_once_are_checked_no_more_than_the_limit(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each try is counted before its password is checked, so a burst of them
    # is held off as one after another would be.
    checked: list[str] = []
    real_authenticate = pages.authenticate

    def counted(*args: Any) -> Any:
        checked.append(args[1])
        return real_authenticate(*args)

    monkeypatch.setattr(pages, "authenticate", counted)
    for _ in range(2):  # two bursts: the second finds the first's wrong ones
        browsers = [TestClient(client.app) for _ in range(12)]  # a session each
        with ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(lambda b: sign_in(b, "alice", "guess").status_code, browsers)
            )
        assert answers.count(400) + answers.count(429) == 12

    # A try held off unchecked is not counted as wrong; one checked is.
    assert len(checked) <= 5


def test_tries_still_being_checked_hold_off_a_moment_not_for_the_window(
    client: TestClient, runtime: Runtime, now: list[datetime]
) -> None:
    # Five tries sent with this one are being checked: it waits a moment,
    # told so, not the 15 minutes that five wrong passwords would earn.
    limits = SignInLimits(5, 30, 900)
    with runtime.db.session() as session:
        for _ in range(5):
            count_sign_in(session, "alice", "testclient", limits)

    held = sign_in(client, "alice", PASSWORDS["alice"])

    assert held.status_code == 429
    assert held.headers["retry-after"] == "5"
    assert error_on(held) == (
        "Several sign-ins for alice are being checked at once: try again in a "
        "few seconds."
    )
    # Tries never finished (their process stopped) are not waited for long.
    now[0] += timedelta(minutes=1, seconds=1)
    assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303


def test_a_try_checked_while_the_limit_is_read_still_counts(
    runtime: Runtime, now: list[datetime]
) -> None:
    # Four wrong passwords, and a fifth try being checked. The last try reads
    # the limit just as that fifth is found wrong: it sees it as one or the
    # other, never as neither, whatever the database shows between reads.
    limits = SignInLimits(5, 30, 900)
    with runtime.db.session() as session:
        for _ in range(4):
            checked_wrong(session, count_sign_in(session, "alice", "here", limits))
        fifth = count_sign_in(session, "alice", "here", limits)
        last = count_sign_in(session, "alice", "here", limits)

    reads: list[str] = []

    def fifth_found_wrong(*args: Any) -> None:
        # After the first read of alice's own tries, from another connection.
        if "username" in args[2] and not reads:
            reads.append(args[2])
            with ThreadPoolExecutor(1) as elsewhere:
                elsewhere.submit(check_fifth).result()

    def check_fifth() -> None:
        with runtime.db.session() as session:
            checked_wrong(session, fifth)

    event.listen(runtime.db.engine, "after_cursor_execute", fifth_found_wrong)
    try:
        with runtime.db.read_session() as session:
            waiting = held_off(session, "alice", "here", limits, besides=last)
    finally:
        event.remove(runtime.db.engine, "after_cursor_execute", fifth_found_wrong)

    assert waiting is not None


def test_a_sign_in_while_the_database_is_down_answers_a_page_saying_so(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_args: object) -> None:
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(pages, "count_sign_in", down)

    answer = sign_in(client, "alice", PASSWORDS["alice"])

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["content-type"].startswith("text/html")
    assert "Try again in a few seconds" in answer.text
    assert "connection refused" not in answer.text
