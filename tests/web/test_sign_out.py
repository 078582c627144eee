"""Signing out: the dashboard's form, and bodies no such form sends."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


def sign_in(client: TestClient) -> str:
    """Sign alice in through the form; the sign-out form's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    client.post(
        "/login",
        data={"username": "alice", "password": "alice-demo", "csrf": csrf[1]},
        follow_redirects=False,
    )
    dashboard = client.get("/", follow_redirects=False)
    assert dashboard.status_code == 200
    form = re.search(
        r'action="/logout".*?name="csrf" value="([^"]+)"', dashboard.text, re.S
    )
    assert form is not None
    return form[1]


REFUSED = "/?sign_out=refused"
NOTICE = "You are still signed in: the sign-out did not go through"


def signed_in(client: TestClient) -> bool:
    return client.get("/", follow_redirects=False).status_code == 200


def test_the_sign_out_form_signs_out(client: TestClient) -> None:
    csrf = sign_in(client)

    answer = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)

    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"
    assert not signed_in(client)


def test_a_cookie_kept_from_before_sign_out_no_longer_signs_anyone_in(
    client: TestClient,
) -> None:
    csrf = sign_in(client)
    kept = dict(client.cookies)
    api_csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert api_csrf is not None

    client.post("/logout", data={"csrf": csrf}, follow_redirects=False)

    client.cookies.clear()
    client.cookies.update(kept)  # a copy taken before, say left on a shared PC
    assert client.get("/api/customers").status_code == 401
    queued = client.post(
        "/api/insurance/sync/to-sheet", headers={"X-CSRF-Token": api_csrf[1]}
    )
    assert queued.status_code == 401
    assert not signed_in(client)


def test_signing_out_in_one_browser_leaves_another_signed_in(
    client: TestClient,
) -> None:
    with TestClient(client.app) as other:
        sign_in(other)
        csrf = sign_in(client)

        client.post("/logout", data={"csrf": csrf}, follow_redirects=False)

        assert not signed_in(client)
        assert signed_in(other)
        assert other.get("/api/customers").status_code == 200


MANY_FIELDS = "&".join(f"f{i}=x" for i in range(2_000)).encode()
BIG_FIELD = (
    b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n'
    + b"c" * 2_000_000
    + b"\r\n--b--\r\n"
)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("multipart/form-data", b"--x--"),  # no boundary
        ("multipart/form-data; boundary=b", b"--b\r\nbroken"),
        ("multipart/form-data; boundary=b", BIG_FIELD),
        ("application/x-www-form-urlencoded", MANY_FIELDS),
    ],
    ids=["no-boundary", "malformed", "2-MB-field", "2000-fields"],
)
def test_a_sign_out_body_no_form_sends_is_a_refused_sign_out_not_an_error(
    client: TestClient, kind: str, body: bytes
) -> None:
    sign_in(client)

    answer = client.post(
        "/logout", headers={"Content-Type": kind}, content=body, follow_redirects=False
    )

    # As a sign-out whose token does not match: no JSON, no sign-out, and
    # back to the dashboard, where the user sees they are still signed in.
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == REFUSED
    assert signed_in(client)


def test_a_sign_out_with_a_wrong_or_missing_token_does_not_sign_out(
    client: TestClient,
) -> None:
    sign_in(client)

    answers = [
        client.post("/logout", data={"csrf": "wrong"}, follow_redirects=False),
        client.post("/logout", data={"csrf": "é"}, follow_redirects=False),
        client.post("/logout", follow_redirects=False),
    ]

    assert [a.status_code for a in answers] == [303, 303, 303]
    assert [a.headers["location"] for a in answers] == [REFUSED] * 3
    assert signed_in(client)


def test_a_refused_sign_out_says_so_on_the_page_it_returns_to(
    client: TestClient,
) -> None:
    sign_in(client)

    page = client.post("/logout", data={"csrf": "stale"})

    assert page.status_code == 200 and signed_in(client)
    assert NOTICE in page.text
    assert NOTICE not in client.get("/").text
