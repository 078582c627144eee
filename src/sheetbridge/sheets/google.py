"""A sheet backend on Google Sheets (API v4), and the HTTP client it uses.

The client is synchronous (``httpx.Client``) because sync jobs call backends
from worker threads. One request path per concern, outermost first:
:meth:`SheetsClient.call` (quota limiter) → ``_send_with_retries`` (429/5xx/
timeouts with exponential backoff, full jitter and ``Retry-After``) →
``_send_authorized`` (bearer token, one refresh on 401) → ``_send_single``
(one HTTP exchange, one ``sheets.request`` log line). HTTP failures become
:class:`~sheetbridge.sheets.errors.SheetError` subclasses in
:func:`translate_error` only.

Version tokens: the API has no cheap modification stamp, so a read's version
is a hash of the values read (``g1:<sha256>:<tabs>``). A write given an
``expected_version`` re-reads those tabs in one ``values.batchGet`` and raises
:class:`SheetChanged` on any difference. That narrows but cannot close the
window between check and write (the API has no conditional writes).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import google.auth.credentials
import google.auth.transport
import httpx
from google.auth.exceptions import GoogleAuthError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from sheetbridge.sheets.base import Cell, CellRange, ErrorValue, TabChanges, TabData
from sheetbridge.sheets.errors import (
    SheetChanged,
    SheetError,
    SheetInvalidRequest,
    SheetNotFound,
    SheetPermissionDenied,
    SheetRateLimited,
    SheetTransientError,
    SheetUnanswered,
)
from sheetbridge.sheets.quota import (
    Kind,
    OnWait,
    QuotaLimiter,
    UnlimitedQuota,
    wait_telling,
)
from sheetbridge.sheets.ranges import (
    RangeSyntaxError,
    a1_range,
    column_letters,
    parse_range,
    quote_title,
)

if TYPE_CHECKING:
    from sheetbridge.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://sheets.googleapis.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
SERIAL_EPOCH = datetime(1899, 12, 30)
MAX_CELL_CHARS = 50_000
DEFAULT_ROWS, DEFAULT_COLUMNS = 1000, 26
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

Json = dict[str, Any]
OnRetry = Callable[[int, float, SheetError], None]
"""Called before a retry with (attempt number, delay in s, the error)."""


# -- serial numbers -------------------------------------------------------------


def serial_to_datetime(serial: float, tz: tzinfo = UTC) -> datetime:
    """A serial number (days since 1899-12-30) as an aware datetime in ``tz``."""
    return (SERIAL_EPOCH + timedelta(days=float(serial))).replace(tzinfo=tz)


def serial_to_date(serial: float) -> date:
    """The date part of a serial number."""
    return (SERIAL_EPOCH + timedelta(days=math.floor(float(serial)))).date()


def to_serial(value: date | datetime, tz: tzinfo = UTC) -> int | float:
    """A date (→ whole days) or datetime (→ days + fraction, in ``tz``) as a serial."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(tz).replace(tzinfo=None)
        delta = value - SERIAL_EPOCH
        serial = delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400
        return int(serial) if serial.is_integer() else serial
    return (value - SERIAL_EPOCH.date()).days


# -- credentials --------------------------------------------------------------------


class TokenSource(Protocol):
    """Supplies the ``Authorization`` header; ``principal`` names who calls."""

    principal: str

    def headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        """Headers to add to a request, refreshing the token when needed."""
        ...


class StaticToken:
    """A fixed bearer token (the emulator), or anonymous when empty."""

    def __init__(self, token: str = "", principal: str = "") -> None:
        """Send ``token`` as is; ``principal`` defaults to "anonymous"."""
        self.token = token
        self.principal = principal or ("static-token" if token else "anonymous")

    def headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        """The bearer header, or none in anonymous mode."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class GoogleAuthToken:
    """Tokens from google-auth credentials, refreshed through httpx."""

    def __init__(
        self,
        credentials: google.auth.credentials.Credentials,
        *,
        principal: str = "",
        timeout_s: float = 30.0,
    ) -> None:
        """Wrap ``credentials`` (service account or authorized user)."""
        self.credentials = credentials
        self.principal = principal or getattr(credentials, "service_account_email", "")
        self.principal = self.principal or "oauth-user"
        self._request = _HttpxAuthRequest(timeout_s)
        self._refreshing = threading.Lock()

    def headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        """A fresh bearer header; refreshes via the credentials' token URI.

        Syncs running at once share one token: one of them refreshes it while
        the others wait for the new one.
        """
        with self._refreshing:
            if force_refresh or not self.credentials.valid:
                self._refresh()
            return {"Authorization": f"Bearer {self.credentials.token}"}

    def _refresh(self) -> None:
        try:
            self.credentials.refresh(self._request)  # type: ignore[no-untyped-call]
        except GoogleAuthError as exc:
            raise SheetPermissionDenied(
                f"cannot get a Google access token for {self.principal}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise SheetTransientError(
                f"token endpoint unreachable for {self.principal}: {exc}"
            ) from exc


class _AuthResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxAuthRequest(google.auth.transport.Request):
    """google-auth's transport interface on httpx (no ``requests`` needed)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _AuthResponse:
        with httpx.Client(timeout=timeout or self.timeout_s) as client:
            response = client.request(method, url, content=body, headers=headers)
        return _AuthResponse(response)


def service_account_token(path: Path, *, timeout_s: float = 30.0) -> GoogleAuthToken:
    """Credentials from a service-account key file (token URI taken from it)."""
    creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(path), scopes=list(SCOPES)
    )
    return GoogleAuthToken(
        creds, principal=creds.service_account_email, timeout_s=timeout_s
    )


def oauth_user_token(path: Path, *, timeout_s: float = 30.0) -> GoogleAuthToken:
    """Credentials from an OAuth authorized-user file (``refresh_token`` inside).

    The file's ``token_uri`` is honoured (google-auth's own loader always
    replaces it with Google's endpoint, which would make local tests call out).
    """
    info = json.loads(Path(path).read_text())
    missing = [
        k for k in ("client_id", "client_secret", "refresh_token") if not info.get(k)
    ]
    if missing:
        raise SheetPermissionDenied(
            f"OAuth token file {path} lacks {', '.join(missing)}"
        )
    creds = user_credentials.Credentials(  # type: ignore[no-untyped-call]
        token=info.get("token"),
        refresh_token=info["refresh_token"],
        client_id=info["client_id"],
        client_secret=info["client_secret"],
        token_uri=info.get("token_uri") or GOOGLE_TOKEN_URI,
        scopes=list(SCOPES),
    )
    principal = str(info.get("account") or info.get("client_id") or "oauth-user")
    return GoogleAuthToken(creds, principal=principal, timeout_s=timeout_s)


def token_source(
    *,
    static_token: str = "",
    credentials_file: Path | None = None,
    oauth_token_file: Path | None = None,
    timeout_s: float = 30.0,
) -> TokenSource:
    """Pick credentials: static token, key file, ``GOOGLE_APPLICATION_CREDENTIALS``,
    OAuth user file, else anonymous (only useful against the emulator)."""
    if static_token:
        return StaticToken(static_token)
    key_file = credentials_file or _env_path("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file is not None:
        return service_account_token(key_file, timeout_s=timeout_s)
    if oauth_token_file is not None:
        return oauth_user_token(oauth_token_file, timeout_s=timeout_s)
    return StaticToken("")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


# -- the HTTP client ---------------------------------------------------------------


class SheetsClient:
    """A small synchronous Sheets API v4 client with quota, retries and auth."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        tokens: TokenSource | None = None,
        limiter: QuotaLimiter | None = None,
        quota_user: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 32.0,
        on_wait: OnWait | None = None,
        on_retry: OnRetry | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """Talk to ``base_url`` (Google, or the emulator in tests).

        ``quota_user`` keys the per-user quota; it defaults to the credentials'
        principal, which is what Google counts. ``on_wait(s)`` is called while
        waiting for quota, ``on_retry(attempt, delay_s, error)`` before retries.
        ``http`` is a connection pool to share (its base URL is used, and
        ``close`` leaves it open); without it the client makes its own.
        """
        self.tokens = tokens or StaticToken("")
        self.limiter = limiter or UnlimitedQuota()
        self.quota_user = quota_user or self.tokens.principal
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_wait = on_wait
        self.on_retry = on_retry
        self.calls: Counter[str] = Counter()
        self.retries = 0
        self._sleep = sleep
        self._jitter = jitter
        self._owns_http = http is None
        self.http = http or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    @property
    def timeout_s(self) -> float:
        """How long a call waits for its answer."""
        return self.http.timeout.read or 0.0

    def close(self) -> None:
        """Close the connection pool, unless it is shared."""
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> SheetsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API calls ----------------------------------------------------------------

    def get_spreadsheet(
        self, spreadsheet_id: str, *, fields: str | None = None
    ) -> Json:
        """spreadsheets.get without grid data."""
        params = {"fields": fields} if fields else {}
        return self.call("GET", _book(spreadsheet_id), "read", spreadsheet_id, params)

    def batch_get(
        self,
        spreadsheet_id: str,
        ranges: Sequence[str],
        *,
        value_render: str = "UNFORMATTED_VALUE",
        date_render: str = "SERIAL_NUMBER",
    ) -> list[Json]:
        """values.batchGet; returns the value ranges in request order."""
        params: list[tuple[str, str]] = [("ranges", text) for text in ranges]
        params += [
            ("valueRenderOption", value_render),
            ("dateTimeRenderOption", date_render),
            ("majorDimension", "ROWS"),
        ]
        path = f"{_book(spreadsheet_id)}/values:batchGet"
        answer = self.call("GET", path, "read", spreadsheet_id, params)
        value_ranges: list[Json] = answer.get("valueRanges", [])
        return value_ranges

    def batch_update_values(
        self,
        spreadsheet_id: str,
        data: list[Json],
        *,
        value_input: str = "RAW",
        retry: bool = True,
    ) -> Json:
        """values.batchUpdate of several ranges in one call (RAW unless told);
        without ``retry``, a transient failure is raised, not sent again."""
        body = {"valueInputOption": value_input, "data": data}
        path = f"{_book(spreadsheet_id)}/values:batchUpdate"
        return self.call(
            "POST", path, "write", spreadsheet_id, json_body=body, retry=retry
        )

    def append(self, spreadsheet_id: str, range_: str, values: list[list[Any]]) -> Json:
        """values.append (RAW, rows inserted) after the table found in ``range_``."""
        path = f"{_book(spreadsheet_id)}/values/{quote(range_, safe='')}:append"
        params = {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}
        body = {"values": values}
        return self.call("POST", path, "write", spreadsheet_id, params, body)

    def clear(self, spreadsheet_id: str, range_: str) -> Json:
        """values.clear of one range."""
        path = f"{_book(spreadsheet_id)}/values/{quote(range_, safe='')}:clear"
        return self.call("POST", path, "write", spreadsheet_id, json_body={})

    def batch_clear(self, spreadsheet_id: str, ranges: Sequence[str]) -> Json:
        """values.batchClear of several ranges."""
        path = f"{_book(spreadsheet_id)}/values:batchClear"
        body = {"ranges": list(ranges)}
        return self.call("POST", path, "write", spreadsheet_id, json_body=body)

    def batch_update(
        self, spreadsheet_id: str, requests: list[Json], *, retry: bool = True
    ) -> Json:
        """spreadsheets.batchUpdate (structural requests, applied atomically);
        without ``retry``, a transient failure is raised, not sent again."""
        path = f"{_book(spreadsheet_id)}:batchUpdate"
        body = {"requests": requests}
        return self.call(
            "POST", path, "write", spreadsheet_id, json_body=body, retry=retry
        )

    # -- the request path --------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        kind: Kind,
        spreadsheet_id: str,
        params: Any = None,
        json_body: Json | None = None,
        *,
        retry: bool = True,
    ) -> Json:
        """Send one API call through quota, retries (unless not to ``retry``)
        and auth; return its JSON."""
        self.calls[_call_name(method, path)] += 1
        return self._send_with_retries(
            method,
            path,
            kind,
            spreadsheet_id,
            params,
            json_body,
            self.max_retries if retry else 0,
        )

    def _send_with_retries(
        self,
        method: str,
        path: str,
        kind: Kind,
        spreadsheet_id: str,
        params: Any,
        json_body: Json | None,
        max_retries: int,
    ) -> Json:
        attempt = 0
        while True:
            attempt += 1
            self.limiter.acquire(kind, self.quota_user, on_wait=self.on_wait)
            try:
                return self._send_authorized(
                    method, path, spreadsheet_id, params, json_body, attempt
                )
            except SheetError as exc:
                if not exc.transient or attempt > max_retries:
                    raise
                self.wait_to_retry(attempt, exc, spreadsheet_id)

    def wait_to_retry(
        self, attempt: int, error: SheetError, spreadsheet_id: str
    ) -> None:
        """Wait before trying again what failed on its ``attempt``-th try,
        with backoff and at least as long as ``error`` asks, telling
        ``on_retry`` what is left."""
        delay_s = self._backoff_s(attempt, error.retry_after)
        self.retries += 1
        logger.info(
            "sheets.retry",
            extra={
                "spreadsheet": spreadsheet_id,
                "attempt": attempt,
                "delay_s": round(delay_s, 3),
                "error": type(error).__name__,
            },
        )
        wait_telling(delay_s, self._sleep, self._retry_teller(attempt, error))

    def _retry_teller(
        self, attempt: int, error: SheetError
    ) -> Callable[[float], None] | None:
        on_retry = self.on_retry
        if on_retry is None:
            return None
        return lambda left_s: on_retry(attempt, left_s, error)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        # "Full jitter" between half and all of the exponential step, so many
        # workers throttled together do not retry in lockstep.
        delay_s = ceiling * (0.5 + 0.5 * float(self._jitter()))
        return float(max(delay_s, retry_after_s or 0.0))

    def _send_authorized(
        self,
        method: str,
        path: str,
        spreadsheet_id: str,
        params: Any,
        json_body: Json | None,
        attempt: int,
    ) -> Json:
        headers = self.tokens.headers()
        response = self._send_single(
            method, path, spreadsheet_id, params, json_body, headers, attempt
        )
        if response.status_code == 401:
            headers = self.tokens.headers(force_refresh=True)
            response = self._send_single(
                method, path, spreadsheet_id, params, json_body, headers, attempt
            )
        if response.status_code >= 400:
            raise translate_error(
                response, spreadsheet_id=spreadsheet_id, principal=self.quota_user
            )
        if not response.content:
            return {}
        answer: Json = response.json()
        return answer

    def _send_single(
        self,
        method: str,
        path: str,
        spreadsheet_id: str,
        params: Any,
        json_body: Json | None,
        headers: dict[str, str],
        attempt: int,
    ) -> httpx.Response:
        started = time.perf_counter()
        status: int | str = "error"
        try:
            response = self.http.request(
                method, path, params=params, json=json_body, headers=headers
            )
            status = response.status_code
            return response
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise SheetTransientError(
                f"cannot reach Google Sheets ({exc})", location=spreadsheet_id
            ) from exc
        except httpx.TimeoutException as exc:
            raise SheetUnanswered(
                f"Google Sheets did not answer in time ({exc})",
                location=spreadsheet_id,
            ) from exc
        except httpx.TransportError as exc:
            raise SheetUnanswered(
                f"Google Sheets did not answer ({exc})", location=spreadsheet_id
            ) from exc
        finally:
            logger.info(
                "sheets.request",
                extra={
                    "api": _call_name(method, path),
                    "spreadsheet": spreadsheet_id,
                    "status": status,
                    "attempt": attempt,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


def translate_error(
    response: httpx.Response, *, spreadsheet_id: str, principal: str
) -> SheetError:
    """Map an API error answer to the most specific :class:`SheetError`."""
    status = response.status_code
    message = _error_message(response)
    where = f"Google spreadsheet {spreadsheet_id}"
    if status == 429:
        return SheetRateLimited(
            f"Google Sheets quota exceeded for {where}: {message}",
            location=spreadsheet_id,
            retry_after=_retry_after_s(response),
        )
    if status in _RETRY_STATUSES or status >= 500:
        return SheetTransientError(
            f"Google Sheets error {status} for {where}: {message}",
            location=spreadsheet_id,
            retry_after=_retry_after_s(response),
        )
    if status == 401:
        return SheetPermissionDenied(
            f"Google rejected the credentials of {principal}: {message}",
            location=spreadsheet_id,
        )
    if status == 403:
        return SheetPermissionDenied(
            f"no access to {where}: share the spreadsheet with {principal} "
            f"(as Editor). Google said: {message}",
            location=spreadsheet_id,
        )
    if status == 404:
        return SheetNotFound(
            f"{where} not found: check the spreadsheet ID, and that it is shared "
            f"with {principal}",
            location=spreadsheet_id,
        )
    tab = _unparsable_tab(message)
    if tab is not None:
        return SheetNotFound(
            f"tab {tab!r} not found in {where} (renamed or deleted?)",
            location=spreadsheet_id,
            tab=tab,
        )
    return SheetInvalidRequest(
        f"Google Sheets refused the request for {where}: {message}",
        location=spreadsheet_id,
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("status") or "")
    return str(error or body)[:300]


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# Google's words for a request naming a tab by an ID it no longer has.
_NO_GRID = re.compile(r"No grid with id: (-?[0-9]+)")


def _unparsable_tab(message: str) -> str | None:
    prefix = "Unable to parse range: "
    if not message.startswith(prefix):
        return None
    text = message[len(prefix) :]
    try:
        parsed = parse_range(text)
    except RangeSyntaxError:
        return text
    return parsed.title if parsed.title is not None else text


def _book(spreadsheet_id: str) -> str:
    return f"/v4/spreadsheets/{quote(spreadsheet_id, safe='')}"


def _call_name(method: str, path: str) -> str:
    tail = path.rsplit("/", 1)[-1]
    if ":" in tail:
        verb = tail.rsplit(":", 1)[1]
        return f"values.{verb}" if "/values" in path else f"spreadsheets.{verb}"
    if "/values/" in path:
        return "values.get" if method == "GET" else "values.update"
    return "spreadsheets.get"


# -- the backend ----------------------------------------------------------------------


class _Throttled(SheetChanged):
    """A write refused whole for quota, of which nothing landed."""


class _Unanswered(SheetChanged):
    """A write that got no answer: it may land yet."""


class GoogleSheetsBackend:
    """Tabs of one Google spreadsheet, behind :class:`SheetBackend`.

    A read is two calls (``spreadsheets.get`` for titles, grids and merges, one
    ``values.batchGet`` for every tab, UNFORMATTED_VALUE with SERIAL_NUMBER
    dates, so numbers and date serials come back as numbers). A write is
    ``spreadsheets.get`` (skipped right after a read of the same backend, whose
    titles and grids it reuses), a ``values.batchGet`` when it must check the
    version, find where appends go or see which cells hold numbers, then a
    ``spreadsheets.batchUpdate`` creating missing tabs and growing grids where
    needed, and one more with everything the write changes (see
    :meth:`_fill`), which lands whole or not at all. A write to rows already
    there then reads them back (see :meth:`_check_rows_stayed`).
    """

    cell_limit = MAX_CELL_CHARS

    def __init__(self, client: SheetsClient, spreadsheet_id: str) -> None:
        """Use ``client`` for the spreadsheet with this ID."""
        self.client = client
        self.spreadsheet_id = spreadsheet_id
        self.location = f"Google spreadsheet {spreadsheet_id}"
        # Tab titles and grids as the last read saw them: the write that
        # follows a read uses them instead of asking again. The values are
        # still read again when a version must be checked.
        self._read_meta: Json | None = None

    def read_tabs(self, tabs: Sequence[str]) -> dict[str, TabData | None]:
        """Read the named tabs in one batchGet; a missing tab maps to ``None``."""
        meta = self._metadata()
        self._read_meta = meta
        rows = self._read_rows(meta, tabs)
        version = _version(tabs, rows)
        return {
            tab: None
            if rows[tab] is None
            else TabData(rows[tab] or [], version, _merges(meta, tab))
            for tab in tabs
        }

    @contextmanager
    def _gone_meanwhile(self) -> Iterator[None]:
        """A tab that Google no longer finds as the sync writes (one it read,
        to check it, or one it writes) was renamed or deleted since it was
        read: the sync reads the sheet again (and writes the tab anew), it
        does not fail for good."""
        try:
            yield
        except SheetNotFound as exc:
            if exc.tab is None:
                raise
            raise SheetChanged(
                f"tab {exc.tab!r} of {self.location} was renamed or deleted while "
                "the sync ran; the sync reads the sheet again",
                location=self.spreadsheet_id,
            ) from exc

    @contextmanager
    def _grid_gone(self, sheets: Mapping[str, Json]) -> Iterator[None]:
        """A call naming a tab by its ID that Google no longer finds: the tab
        was deleted since it was read (see :meth:`_gone_meanwhile`)."""
        try:
            yield
        except SheetInvalidRequest as exc:
            found = _NO_GRID.search(str(exc))
            titles = {props["sheetId"]: title for title, props in sheets.items()}
            if found is None or int(found[1]) not in titles:
                raise
            tab = titles[int(found[1])]
            raise SheetNotFound(
                f"tab {tab!r} not found in {self.location} (deleted?)",
                location=self.spreadsheet_id,
                tab=tab,
            ) from exc

    def write(
        self,
        changes: Mapping[str, TabChanges],
        *,
        expected_version: str | None = None,
    ) -> None:
        """Apply changes to several tabs; see the class docstring for the calls."""
        changes = {tab: ch for tab, ch in changes.items() if not ch.is_empty()}
        if not changes:
            return
        _check_cell_sizes(changes, self.location)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._gone_meanwhile():
                    self._write(changes, expected_version)
                return
            except _Throttled as exc:
                # Refused whole, for quota: nothing landed. Tried again after
                # the wait, as a read is, where the sheet's version shows that
                # no row moved meanwhile (else the sync reads it again).
                if expected_version is None or attempt > self.client.max_retries:
                    raise
                self.client.wait_to_retry(attempt, exc, self.spreadsheet_id)

    def _write(
        self, changes: Mapping[str, TabChanges], expected_version: str | None
    ) -> None:
        meta, self._read_meta = self._read_meta or self._metadata(), None
        tz = _zone(meta)
        # Where rows go, and which cells hold numbers (see _formats).
        read_for = {
            tab
            for tab, ch in changes.items()
            if ch.append or any(map(_format_name, ch.cells.values()))
        }
        checked_tabs = _version_tabs(expected_version)
        rows = self._read_rows(meta, sorted(read_for | set(checked_tabs or [])))
        if checked_tabs is not None and _version(checked_tabs, rows) != (
            expected_version
        ):
            raise SheetChanged(
                f"{self.location} changed since it was read; the sync will "
                "read it again",
                location=self.spreadsheet_id,
            )
        sheets = _sheets_by_title(meta)
        grow = self._grow_requests(changes, sheets, rows)
        added: list[int] = []
        with self._grid_gone(sheets):
            if grow:
                grown = self._grow(grow)
                for reply in grown.get("replies", []):
                    if "addSheet" in reply:
                        properties = reply["addSheet"]["properties"]
                        sheets[properties["title"]] = properties
                        added.append(properties["sheetId"])
            try:
                self._fill(changes, rows, sheets, tz)
            except _Unanswered as exc:
                # It may land yet, in rows moved since: given as long again as
                # the call waited, it is checked as an answered write is, and
                # the sync reads the sheet again (its rows not written twice).
                wait = SheetUnanswered(str(exc), retry_after=self.client.timeout_s)
                try:
                    self.client.wait_to_retry(1, wait, self.spreadsheet_id)
                    self._check_rows_stayed(meta, changes, rows, tz)
                finally:
                    self._take_back(added)
                raise SheetChanged(str(exc), location=self.spreadsheet_id) from exc
            except BaseException:
                self._take_back(added)
                raise
        self._check_rows_stayed(meta, changes, rows, tz)
        logger.info(
            "sheets.write",
            extra={
                "spreadsheet": self.spreadsheet_id,
                "tabs": sorted(changes),
                "cells": sum(len(ch.cells) for ch in changes.values()),
                "appended_rows": sum(len(ch.append) for ch in changes.values()),
                "deleted_rows": sum(len(ch.delete_rows) for ch in changes.values()),
            },
        )

    def _check_rows_stayed(
        self,
        meta: Json,
        changes: Mapping[str, TabChanges],
        rows: dict[str, list[list[Cell]] | None],
        tz: tzinfo,
    ) -> None:
        """Read back the rows the write named by number, and undo what landed
        in the wrong ones.

        Google takes no condition with a write: rows inserted, deleted or
        sorted between the sync's last read and its write move other rows
        under the cells it writes, and the values meant for one record land
        in another's row, where the next import would take them for edits.
        A row is known by its ID, or, being given its ID, by its synced
        cells. One that is not the row read gets back the values it held
        when read (a blank row put in is blanked again), and the sync reads
        the sheet again and writes each value where its row now is. Where
        the row there is none the sync read (typed in meanwhile), what was
        there cannot be told: those cells are blanked and the write fails
        naming them, for a person to check. A put-back cut short is tried
        again on a fresh read; one that cannot be made fails the same way.
        Rows appended need no check: they are inserted."""
        spans = {
            tab: span
            for tab, ch in changes.items()
            if (span := _span_to_check(ch, rows.get(tab) or [])) is not None
        }
        if not spans:
            return  # only headers, new rows, or rows the sync itself filled
        attempt = 0
        while True:
            attempt += 1
            now = self._read_landed(meta, spans)
            put_back: dict[str, dict[tuple[int, int], Cell]] = {}
            unsure: list[str] = []
            for tab in spans:
                before, after = rows.get(tab) or [], now.get(tab) or []
                moved = _moved_cells(changes[tab], before, after, tz)
                # A cell in a row never read is blanked: what it held cannot
                # be told, and left as written it would pass for that row's.
                put_back[tab] = moved.put_back | dict.fromkeys(moved.unsure, "")
                unsure += [f"{tab}!{column_letters(c)}{r}" for r, c in moved.unsure]
            if not any(put_back.values()):
                return
            try:
                self.client.batch_update_values(
                    self.spreadsheet_id,
                    _value_ranges(
                        {tab: TabChanges(cells) for tab, cells in put_back.items()},
                        tz,
                    ),
                    retry=False,
                )
                break
            except SheetError as exc:
                if not exc.transient or attempt > self.client.max_retries:
                    raise self._left_misplaced(put_back, exc) from exc
                # Read again after the wait: rows may have moved once more.
                self.client.wait_to_retry(attempt, exc, self.spreadsheet_id)
        if unsure:
            raise SheetInvalidRequest(
                f"rows of {self.location} moved while the sync wrote to them (a "
                "sort, or rows inserted, deleted or typed in), and values meant for "
                f"other rows landed in rows it never read: {_cells(unsure)}; they "
                "were blanked, as what they held before cannot be told: check "
                "them, then sync again (the app keeps every record: one whose row "
                "is gone is offered for writing back)",
                location=self.spreadsheet_id,
            )
        count = sum(len(cells) for cells in put_back.values())
        raise SheetChanged(
            f"rows of {self.location} moved while the sync wrote to them (a sort, "
            f"or rows inserted or deleted): the {count:,} values that landed in "
            "other records' rows were put back, and the sync reads the sheet again",
            location=self.spreadsheet_id,
        )

    def _left_misplaced(
        self, put_back: Mapping[str, Mapping[tuple[int, int], Cell]], exc: SheetError
    ) -> SheetInvalidRequest:
        """The failure of a sync that could not put back values it wrote into
        other records' rows: not one to retry, whose read would take them for
        edits, but one for a person to check."""
        cells = [
            f"{tab}!{column_letters(column)}{row}"
            for tab, landed in put_back.items()
            for row, column in landed
        ]
        return SheetInvalidRequest(
            f"rows of {self.location} moved while the sync wrote to them, and "
            f"values meant for other rows landed in {_cells(cells)}, which could "
            f"not be put back ({exc}): check them, then sync again",
            location=self.spreadsheet_id,
        )

    def _read_landed(
        self, meta: Json, spans: Mapping[str, tuple[int, int]]
    ) -> dict[str, list[list[Cell]]]:
        """Each tab's rows from the first to the last of its span, at their
        row numbers: one call."""
        sheets = _sheets_by_title(meta)
        ranges: dict[str, tuple[str, int]] = {}  # tab -> (range, its first row)
        for tab, (first, last) in spans.items():
            props = _find(sheets, tab)
            if props is not None:
                ranges[tab] = (f"{quote_title(props['title'])}!{first}:{last}", first)
        if not ranges:
            return {}
        answers = self.client.batch_get(
            self.spreadsheet_id, [text for text, _ in ranges.values()]
        )
        return {
            tab: [[] for _ in range(first - 1)]
            + [_clean_row(line) for line in answer.get("values", [])]
            for (tab, (_, first)), answer in zip(ranges.items(), answers, strict=True)
        }

    def _grow(self, requests: list[Json]) -> Json:
        """Add the missing tabs and the rows and columns the write needs.

        A tab that was missing when the sheet was read may have been added
        since (by a person, or a sync of another user of the sheet): Google
        then refuses the whole request, and the sync reads the sheet again
        rather than failing for good.
        """
        try:
            return self.client.batch_update(self.spreadsheet_id, requests)
        except SheetInvalidRequest as exc:
            adding = [
                request["addSheet"]["properties"]["title"]
                for request in requests
                if "addSheet" in request
            ]
            sheets = _sheets_by_title(self._metadata()) if adding else {}
            found = [tab for tab in adding if _find(sheets, tab) is not None]
            if not found:
                raise
            raise SheetChanged(
                f"tab {found[0]!r} was added to {self.location} while the sync "
                "ran; the sync reads the sheet again",
                location=self.spreadsheet_id,
            ) from exc

    def _take_back(self, added: list[int]) -> None:
        """Delete the tabs a write added before it failed: left empty, the
        next sync would read each as a tab whose rows were all deleted, not
        as one to write anew. If that fails too, the failure told is the
        write's."""
        if not added:
            return
        requests = [{"deleteSheet": {"sheetId": sheet_id}} for sheet_id in added]
        try:
            self.client.batch_update(self.spreadsheet_id, requests, retry=False)
        except SheetError:
            logger.warning(
                "sheets.added_tabs_left",
                extra={"spreadsheet": self.spreadsheet_id, "sheet_ids": added},
            )

    def _fill(
        self,
        changes: Mapping[str, TabChanges],
        rows: dict[str, list[list[Cell]] | None],
        sheets: dict[str, Json],
        tz: tzinfo,
    ) -> None:
        """Write every change in one call, which lands whole or not at all:
        number formats and cells at the rows as read, then the deletes, then
        the rows to append below what is left. Cut short, a write has landed
        nothing, and its retry writes and counts all of it.

        Rows for a tab that held only its header, as a first sync writes,
        follow as values: bulkier as typed cells, and with no rows there to
        move. The first call gives their dates and amounts their formats;
        cut short before the values, the retry writes and counts them. Only
        what the first call landed in other tabs is then counted by the retry
        as already in the sheet."""
        # The calls name rows by where they were just read. Sent again after
        # a wait, they would land wherever a sort had moved other rows to: cut
        # short, they go back to the sync, which reads the sheet again. Rows
        # appended below data rows are inserted there, so a row typed or
        # moved there meanwhile is moved down, not written over.
        below_data = {
            tab: ch
            for tab, ch in changes.items()
            if ch.append and len(rows.get(tab) or []) > 1
        }
        into_empty = {
            tab: ch
            for tab, ch in changes.items()
            if ch.append and tab not in below_data
        }
        requests = (
            _formats(changes, rows, sheets)
            + _cell_requests(changes, sheets, tz)
            + _delete_requests(changes, sheets)
            + _append_requests(below_data, rows, sheets, tz)
        )
        data = _append_ranges(into_empty, rows, tz)
        landed = False
        try:
            if requests:
                self.client.batch_update(self.spreadsheet_id, requests, retry=False)
                landed = True
            if data:
                self.client.batch_update_values(self.spreadsheet_id, data, retry=False)
        except SheetError as exc:
            if not exc.transient:
                raise
            # A call refused for quota was not applied: with nothing landed,
            # the write may be tried again where no row has moved (see write).
            # One that got no answer may land yet (see _write).
            kind = SheetChanged
            if isinstance(exc, SheetRateLimited) and not landed:
                kind = _Throttled
            elif isinstance(exc, SheetUnanswered):
                kind = _Unanswered
            raise kind(
                f"a write to {self.location} was cut short ({exc}); rows may "
                "have moved since the sheet was read, so it was not sent again "
                "as it was",
                location=self.spreadsheet_id,
                retry_after=exc.retry_after,
            ) from exc

    def _metadata(self) -> Json:
        return self.client.get_spreadsheet(
            self.spreadsheet_id,
            fields="properties(title,timeZone),sheets.properties(sheetId,title,"
            "index,gridProperties(rowCount,columnCount)),sheets.merges",
        )

    def _read_rows(
        self, meta: Json, tabs: Sequence[str]
    ) -> dict[str, list[list[Cell]] | None]:
        sheets = _sheets_by_title(meta)
        titles = {tab: _find(sheets, tab) for tab in dict.fromkeys(tabs)}
        present = {tab: props["title"] for tab, props in titles.items() if props}
        rows: dict[str, list[list[Cell]] | None] = dict.fromkeys(tabs)
        if not present:
            return rows
        ranges = [quote_title(title) for title in present.values()]
        answers = self.client.batch_get(self.spreadsheet_id, ranges)
        for tab, answer in zip(present, answers, strict=True):
            rows[tab] = [_clean_row(line) for line in answer.get("values", [])]
        return rows

    def _grow_requests(
        self,
        changes: Mapping[str, TabChanges],
        sheets: dict[str, Json],
        rows: Mapping[str, list[list[Cell]] | None],
    ) -> list[Json]:
        requests: list[Json] = []
        for tab, ch in changes.items():
            last_row = last_row_after(rows.get(tab) or [], ch.cells)
            need_rows, need_cols = _extent(ch, last_row)
            props = _find(sheets, tab)
            if props is None:
                grid = {
                    "rowCount": max(DEFAULT_ROWS, need_rows),
                    "columnCount": max(DEFAULT_COLUMNS, need_cols),
                }
                requests.append(
                    {"addSheet": {"properties": {"title": tab, "gridProperties": grid}}}
                )
                continue
            grid = props.get("gridProperties", {})
            for dimension, have, need in (
                ("ROWS", grid.get("rowCount", 0), need_rows),
                ("COLUMNS", grid.get("columnCount", 0), need_cols),
            ):
                if need > have:
                    requests.append(
                        {
                            "appendDimension": {
                                "sheetId": props["sheetId"],
                                "dimension": dimension,
                                "length": need - have,
                            }
                        }
                    )
        return requests

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        spreadsheet_id: str,
        *,
        limiter: QuotaLimiter | None = None,
        on_wait: OnWait | None = None,
        on_retry: OnRetry | None = None,
    ) -> GoogleSheetsBackend:
        """A backend configured from :class:`~sheetbridge.config.Settings`."""
        return cls(
            client_from_settings(
                settings, limiter=limiter, on_wait=on_wait, on_retry=on_retry
            ),
            spreadsheet_id,
        )


def client_from_settings(
    settings: Settings,
    *,
    limiter: QuotaLimiter | None = None,
    on_wait: OnWait | None = None,
    on_retry: OnRetry | None = None,
) -> SheetsClient:
    """A :class:`SheetsClient` from the ``google_*`` settings.

    Clients made this way share, per process, one connection pool and one
    token source per configuration: a sync then costs neither a TLS set-up nor
    a trip to the token endpoint, and a key file replaced on disk is read again.
    """
    base_url = settings.google_sheets_base_url.rstrip("/")
    return SheetsClient(
        base_url=base_url,
        tokens=_shared_tokens(settings),
        http=_shared_http(base_url, settings.google_timeout_s),
        limiter=limiter,
        timeout_s=settings.google_timeout_s,
        max_retries=settings.google_max_retries,
        backoff_base_s=settings.google_backoff_base_s,
        backoff_max_s=settings.google_backoff_max_s,
        on_wait=on_wait,
        on_retry=on_retry,
    )


_shared_guard = threading.Lock()
_shared_pools: dict[tuple[str, float], httpx.Client] = {}
_shared_token_sources: dict[tuple[object, ...], TokenSource] = {}


# Every connection a sync opened stays open until idle this long: httpx's
# default keeps 20, so with more syncs at once than that, each round of calls
# closed the extra ones and the next round paid for new connections (with
# Google, a TLS set-up each).
KEEPALIVE_S = 5.0


def _shared_http(base_url: str, timeout_s: float) -> httpx.Client:
    with _shared_guard:
        pool = _shared_pools.get((base_url, timeout_s))
        if pool is None or pool.is_closed:
            limits = httpx.Limits(
                max_connections=None,
                max_keepalive_connections=None,
                keepalive_expiry=KEEPALIVE_S,
            )
            pool = httpx.Client(base_url=base_url, timeout=timeout_s, limits=limits)
            _shared_pools[(base_url, timeout_s)] = pool
        return pool


def _shared_tokens(settings: Settings) -> TokenSource:
    files = (
        settings.google_credentials_file or _env_path("GOOGLE_APPLICATION_CREDENTIALS"),
        settings.google_oauth_token_file,
    )
    key = (
        settings.google_static_token,
        *((str(path), _modified_ns(path)) for path in files if path is not None),
        settings.google_timeout_s,
    )
    with _shared_guard:
        tokens = _shared_token_sources.get(key)
        if tokens is None:
            tokens = token_source(
                static_token=settings.google_static_token,
                credentials_file=settings.google_credentials_file,
                oauth_token_file=settings.google_oauth_token_file,
                timeout_s=settings.google_timeout_s,
            )
            _shared_token_sources[key] = tokens
        return tokens


def _modified_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None  # token_source names the missing file


GOOGLE_NOT_SET_UP = (
    "Google Sheets is not set up on this server: an admin must give it a "
    "service-account key file (SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE, or "
    "GOOGLE_APPLICATION_CREDENTIALS) or an OAuth authorized-user file "
    "(SHEETBRIDGE_GOOGLE_OAUTH_TOKEN_FILE)"
)


# What each kind of credentials file must give, as its loader reads it.
SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")
OAUTH_USER_FIELDS = ("client_id", "client_secret", "refresh_token")


def google_problem(settings: Settings) -> str | None:
    """Why this server cannot sync with Google Sheets, or None if it can.

    It can with the credentials :func:`token_source` picks, when their file
    is there and of its kind (nothing is sent to Google to find out), or
    with none against another address than Google's, an emulator that may
    take none. Without either, every call would go to Google with no
    credentials.
    """
    if settings.google_static_token:
        return None
    if settings.google_credentials_file is not None:
        return _file_problem(
            "SHEETBRIDGE_GOOGLE_CREDENTIALS_FILE",
            settings.google_credentials_file,
            "a service-account key",
            SERVICE_ACCOUNT_FIELDS,
        )
    key_file = _env_path("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file is not None:
        return _file_problem(
            "GOOGLE_APPLICATION_CREDENTIALS",
            key_file,
            "a service-account key",
            SERVICE_ACCOUNT_FIELDS,
        )
    if settings.google_oauth_token_file is not None:
        return _file_problem(
            "SHEETBRIDGE_GOOGLE_OAUTH_TOKEN_FILE",
            settings.google_oauth_token_file,
            "an OAuth authorized-user file",
            OAUTH_USER_FIELDS,
        )
    if settings.google_sheets_base_url.rstrip("/") != DEFAULT_BASE_URL:
        return None
    return GOOGLE_NOT_SET_UP


def _file_problem(
    setting: str, path: Path, kind: str, fields: tuple[str, ...]
) -> str | None:
    """What keeps the credentials file ``setting`` names from serving, in words."""
    try:
        info = json.loads(path.read_bytes())
    except FileNotFoundError:
        problem = "does not exist"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
    except ValueError:
        problem = "is not JSON"
    else:
        given = info if isinstance(info, dict) else {}
        missing = [field for field in fields if not given.get(field)]
        if not missing:
            return None
        problem = f"is not {kind} (it has no {', '.join(missing)})"
    return (
        f"Google Sheets cannot be used on this server: the file {setting} names "
        f"{problem}; an admin must correct the setting or the file"
    )


# A spreadsheet's address: docs.google.com/spreadsheets/d/<ID>/edit#gid=0,
# with or without a scheme, and with /u/<n>/ when several accounts are signed in.
_SPREADSHEET_URL = re.compile(
    r"(?:https?://)?docs\.google\.com/spreadsheets/(?:u/\d+/)?d/([^/?#\s]+)"
    r"(?:[/?#]\S*)?"
)


def spreadsheet_id_in(text: str) -> str:
    """The spreadsheet ID of ``text``: the ID itself, or the one in the
    spreadsheet's address that people copy from their browser."""
    text = text.strip()
    found = _SPREADSHEET_URL.fullmatch(text)
    return found.group(1) if found else text


def service_account_email(settings: Settings) -> str | None:
    """The email to share spreadsheets with, if a service account is configured."""
    path = settings.google_credentials_file or _env_path(
        "GOOGLE_APPLICATION_CREDENTIALS"
    )
    if path is None:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    email = info.get("client_email") if isinstance(info, dict) else None
    return email if isinstance(email, str) else None


# -- helpers: reading ---------------------------------------------------------------


def _sheets_by_title(meta: Json) -> dict[str, Json]:
    return {
        sheet["properties"]["title"]: sheet["properties"]
        for sheet in meta.get("sheets", [])
    }


def _merges(meta: Json, tab: str) -> list[CellRange]:
    """The tab's merged cells, from the GridRanges (0-based, end exclusive)
    of its ``merges``; an index left out spans the grid to that side."""
    props = _find(_sheets_by_title(meta), tab)
    if props is None:
        return []
    sheet = next(s for s in meta.get("sheets", []) if s["properties"] is props)
    grid = props.get("gridProperties", {})
    merges = []
    for span in sheet.get("merges", []):
        merges.append(
            CellRange(
                int(span.get("startRowIndex", 0)) + 1,
                int(span.get("startColumnIndex", 0)) + 1,
                int(span.get("endRowIndex", grid.get("rowCount", 0))),
                int(span.get("endColumnIndex", grid.get("columnCount", 0))),
            )
        )
    return merges


def _find(sheets: dict[str, Json], tab: str) -> Json | None:
    """The tab's properties; titles are unique regardless of case in Sheets."""
    if tab in sheets:
        return sheets[tab]
    folded = tab.casefold()
    return next((p for t, p in sheets.items() if t.casefold() == folded), None)


def _clean_row(line: list[Any]) -> list[Cell]:
    row: list[Cell] = [_cell(value) for value in line]
    while row and row[-1] is None:
        row.pop()
    return row


# What Google Sheets (and Excel, LibreOffice) show in a cell whose formula
# failed. The Sheets API gives an error back as its bare text, and Sheets turns
# these typed into a cell into the error itself, so from Google such text is
# read as an error. A workbook marks its error cells and needs no such guess.
ERROR_TEXTS = frozenset(
    {
        "#NULL!",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#N/A",
        "#ERROR!",
        "#GETTING_DATA",
        "#SPILL!",
        "#CALC!",
        "#FIELD!",
        "#BLOCKED!",
        "#CONNECT!",
        "#BUSY!",
        "#UNKNOWN!",
    }
)


def _cell(value: Any) -> Cell:
    if isinstance(value, str):
        if not value:
            return None
        return ErrorValue(value) if value in ERROR_TEXTS else value
    return value  # type: ignore[no-any-return]


def _version(tabs: Sequence[str], rows: Mapping[str, list[list[Cell]] | None]) -> str:
    names = list(dict.fromkeys(tabs))
    payload = json.dumps([[tab, rows.get(tab)] for tab in names], default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    return f"g1:{digest}:{json.dumps(names, ensure_ascii=False)}"


def _version_tabs(version: str | None) -> list[str] | None:
    if not version or not version.startswith("g1:"):
        return None
    try:
        names = json.loads(version.split(":", 2)[2])
    except (IndexError, ValueError):
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


def _zone(meta: Json) -> tzinfo:
    name = meta.get("properties", {}).get("timeZone") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


# -- helpers: writing -------------------------------------------------------------


def _check_cell_sizes(changes: Mapping[str, TabChanges], location: str) -> None:
    """Reject over-long text before any API call, naming tab, row and column."""
    for tab, ch in changes.items():
        for (row, col), value in ch.cells.items():
            _check_one(tab, f"row {row}", col, value, location)
        for offset, values in enumerate(ch.append):
            for col, value in enumerate(values, start=1):
                _check_one(tab, f"appended row {offset + 1}", col, value, location)


def _check_one(tab: str, row: str, col: int, value: Cell, location: str) -> None:
    if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
        raise SheetInvalidRequest(
            f"tab {tab!r}, {row}, column {column_letters(col)}: text of "
            f"{len(value):,} characters is longer than the {MAX_CELL_CHARS:,} a "
            "Google Sheets cell holds",
            location=location,
            tab=tab,
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise SheetInvalidRequest(
            f"tab {tab!r}, {row}, column {column_letters(col)}: {value} is not a "
            "number a spreadsheet can hold",
            location=location,
            tab=tab,
        )


def _extent(ch: TabChanges, last_row: int) -> tuple[int, int]:
    rows = max((row for row, _ in ch.cells), default=0)
    cols = max((col for _, col in ch.cells), default=0)
    if ch.append:
        rows = max(rows, last_row + len(ch.append))
        cols = max(cols, max(len(values) for values in ch.append))
    return rows, cols


def last_row_after(
    rows: list[list[Cell]], cells: Mapping[tuple[int, int], Cell]
) -> int:
    """The last non-empty row once ``cells`` are written over ``rows``."""
    filled: dict[int, set[int]] = {}
    for row, _ in cells:
        filled.setdefault(row, set())
    for row in filled:
        if row <= len(rows):
            filled[row] = {
                col for col, value in enumerate(rows[row - 1], 1) if value is not None
            }
    for (row, col), value in cells.items():
        if value is None or value == "":
            filled[row].discard(col)
        else:
            filled[row].add(col)
    last = len(rows)
    while last and last in filled and not filled[last]:
        last -= 1
        while (
            last
            and last not in filled
            and not any(value is not None for value in rows[last - 1])
        ):
            last -= 1
    touched = max((row for row, cols in filled.items() if cols), default=0)
    return max(last, touched)


def _value_ranges(changes: Mapping[str, TabChanges], tz: tzinfo) -> list[Json]:
    """The cells to write, as ranges of values."""
    data: list[Json] = []
    for tab, ch in changes.items():
        for top, left, block in _blocks(ch.cells, tz):
            bottom, right = top + len(block) - 1, left + len(block[0]) - 1
            data.append(
                {"range": a1_range(tab, top, left, bottom, right), "values": block}
            )
    return data


def _blocks(
    cells: Mapping[tuple[int, int], Cell], tz: tzinfo
) -> Iterator[tuple[int, int, list[list[Any]]]]:
    """Group cells into rectangles of consecutive rows; gaps are ``null`` (kept)."""
    by_row: dict[int, dict[int, Cell]] = {}
    for (row, col), value in cells.items():
        by_row.setdefault(row, {})[col] = value
    run: list[int] = []
    for row in sorted(by_row):
        if run and row != run[-1] + 1:
            yield _block(run, by_row, tz)
            run = []
        run.append(row)
    if run:
        yield _block(run, by_row, tz)


def _block(
    run: list[int], by_row: dict[int, dict[int, Cell]], tz: tzinfo
) -> tuple[int, int, list[list[Any]]]:
    left = min(min(by_row[row]) for row in run)
    right = max(max(by_row[row]) for row in run)
    block = []
    for row in run:
        line: list[Any] = [None] * (right - left + 1)
        for col, value in by_row[row].items():
            # In TabChanges.cells None means "clear"; in the API null means
            # "leave as is", so a clear is sent as an empty string.
            line[col - left] = "" if value is None else api_value(value, tz)
        block.append(line)
    return run[0], left, block


def api_value(value: Cell, tz: tzinfo = UTC) -> Any:
    """A cell value as JSON for a RAW write: dates as serials, text as text."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date):
        return to_serial(value, tz)
    return str(value)


# The number format a typed value gets where the sheet has none for it: the
# spreadsheet locale's own date and date-time formats, and amounts with two
# decimal places, as the workbook backend writes them.
_NUMBER_FORMATS: dict[str, Json] = {
    "date-time": {"type": "DATE_TIME"},
    "date": {"type": "DATE"},
    "amount": {"type": "NUMBER", "pattern": "#,##0.00"},
}


def _format_name(value: Cell) -> str | None:
    if isinstance(value, datetime):
        return "date-time"
    if isinstance(value, date):
        return "date"
    if isinstance(value, Decimal):
        return "amount"
    return None


def _holds_number(line: list[Cell], col: int) -> bool:
    """Whether the 1-based column of a row as read holds a number (a date
    reads as its serial)."""
    value = line[col - 1] if col <= len(line) else None
    return isinstance(value, int | float) and not isinstance(value, bool)


def _formats(
    changes: Mapping[str, TabChanges],
    rows: Mapping[str, list[list[Cell]] | None],
    sheets: dict[str, Json],
) -> list[Json]:
    """Number formats for the dates and amounts a write puts where the sheet
    has no number: written as serials and plain numbers, they would show as
    45000 and 12. That is the date and amount columns of the rows a write
    appends, and each such cell written into a row already there that held
    no number. A cell that held one keeps its format, which may be a
    person's own (day first, dollars)."""
    requests: list[Json] = []
    for tab, ch in changes.items():
        props = _find(sheets, tab)
        if props is None:
            continue
        grid = rows.get(tab) or []
        # (0-based column, format name) -> the 0-based rows to format
        cells: dict[tuple[int, str], set[int]] = {}
        for (row, col), value in ch.cells.items():
            name = _format_name(value)
            if name and not (row <= len(grid) and _holds_number(grid[row - 1], col)):
                cells.setdefault((col - 1, name), set()).add(row - 1)
        first = last_row_after(grid, ch.cells)
        for offset, values in enumerate(ch.append):
            for col, value in enumerate(values):
                if name := _format_name(value):
                    cells.setdefault((col, name), set()).add(first + offset)
        for (col, name), taken in sorted(cells.items()):
            for start, end in _runs(sorted(taken, reverse=True)):
                span = {
                    "sheetId": props["sheetId"],
                    "startRowIndex": start,
                    "endRowIndex": end + 1,
                    "startColumnIndex": col,
                    "endColumnIndex": col + 1,
                }
                number_format = _NUMBER_FORMATS[name]
                requests.append(
                    {
                        "repeatCell": {
                            "range": span,
                            "cell": {
                                "userEnteredFormat": {"numberFormat": number_format}
                            },
                            "fields": "userEnteredFormat.numberFormat",
                        }
                    }
                )
    return requests


def _cell_requests(
    changes: Mapping[str, TabChanges], sheets: dict[str, Json], tz: tzinfo
) -> list[Json]:
    """The cells to write, at their rows as read: their values only, so that
    each keeps its number format (or the one :func:`_formats` gives it). One
    request per run of written cells along a row, and rows with the same
    run below one another in one request."""
    requests: list[Json] = []
    for tab, ch in changes.items():
        props = _find(sheets, tab)
        if props is None or not ch.cells:
            continue
        by_row: dict[int, list[int]] = {}
        for row, col in sorted(ch.cells):
            by_row.setdefault(row, []).append(col)
        # Runs of columns, each with the rows below one another written there.
        spans: list[tuple[int, int, list[int]]] = []
        latest: dict[tuple[int, int], list[int]] = {}
        for row, cols in by_row.items():
            for first, last in _runs(cols[::-1]):
                below = latest.get((first, last))
                if below and below[-1] == row - 1:
                    below.append(row)
                else:
                    latest[first, last] = [row]
                    spans.append((first, last, latest[first, last]))
        for first, last, span_rows in spans:
            cells = [
                [
                    _cell_data(ch.cells[row, col], tz, formats=False)
                    for col in range(first, last + 1)
                ]
                for row in span_rows
            ]
            requests.append(
                _update_cells(props, span_rows[0], first, cells, "userEnteredValue")
            )
    return requests


def _append_requests(
    changes: Mapping[str, TabChanges],
    rows: Mapping[str, list[list[Cell]] | None],
    sheets: dict[str, Json],
    tz: tzinfo,
) -> list[Json]:
    """Rows to append, inserted below the last row and filled with their
    values and the formats of their dates and amounts."""
    requests: list[Json] = []
    for tab, ch in changes.items():
        props = _find(sheets, tab)
        if props is None:
            continue
        first = _first_appended(ch, rows.get(tab) or [])
        requests.append(
            {
                "insertDimension": {
                    "range": {
                        "sheetId": props["sheetId"],
                        "dimension": "ROWS",
                        "startIndex": first - 1,
                        "endIndex": first - 1 + len(ch.append),
                    },
                    "inheritFromBefore": True,
                }
            }
        )
        cells = [[_cell_data(value, tz) for value in values] for values in ch.append]
        fields = "userEnteredValue,userEnteredFormat.numberFormat"
        requests.append(_update_cells(props, first, 1, cells, fields))
    return requests


def _append_ranges(
    changes: Mapping[str, TabChanges],
    rows: Mapping[str, list[list[Cell]] | None],
    tz: tzinfo,
) -> list[Json]:
    """Rows to append, as ranges of values below the last row."""
    data: list[Json] = []
    for tab, ch in changes.items():
        first = _first_appended(ch, rows.get(tab) or [])
        width = max(len(values) for values in ch.append) or 1
        block = [
            [api_value(value, tz) for value in values] + [None] * (width - len(values))
            for values in ch.append
        ]
        last = first + len(block) - 1
        data.append({"range": a1_range(tab, first, 1, last, width), "values": block})
    return data


def _update_cells(
    props: Json, row: int, col: int, cells: list[list[Json]], fields: str
) -> Json:
    """An updateCells request writing ``cells`` from the 1-based ``row`` and
    ``col`` on."""
    return {
        "updateCells": {
            "start": {
                "sheetId": props["sheetId"],
                "rowIndex": row - 1,
                "columnIndex": col - 1,
            },
            "rows": [{"values": line} for line in cells],
            "fields": fields,
        }
    }


def _cell_data(value: Cell, tz: tzinfo, *, formats: bool = True) -> Json:
    """A cell to write: its value, typed (none clears it), and with
    ``formats`` for a date or an amount its number format."""
    written = api_value(value, tz)
    if written is None or written == "":
        return {}
    if isinstance(written, bool):
        data: Json = {"userEnteredValue": {"boolValue": written}}
    elif isinstance(written, int | float):
        data = {"userEnteredValue": {"numberValue": written}}
    else:
        data = {"userEnteredValue": {"stringValue": str(written)}}
    if formats and (name := _format_name(value)):
        data["userEnteredFormat"] = {"numberFormat": _NUMBER_FORMATS[name]}
    return data


def _delete_requests(
    changes: Mapping[str, TabChanges], sheets: dict[str, Json]
) -> list[Json]:
    requests: list[Json] = []
    for tab, ch in changes.items():
        props = _find(sheets, tab)
        if props is None or not ch.delete_rows:
            continue
        # Highest first: deleting a row shifts every row below it up.
        for start, end in _runs(sorted(set(ch.delete_rows), reverse=True)):
            requests.append(
                {
                    "deleteDimension": {
                        "range": {
                            "sheetId": props["sheetId"],
                            "dimension": "ROWS",
                            "startIndex": start - 1,
                            "endIndex": end,
                        }
                    }
                }
            )
    return requests


@dataclass
class _Moved:
    """Cells a write put into rows that had moved: each with the value to put
    back, or (row, column) where the row there is none the sync read."""

    put_back: dict[tuple[int, int], Cell] = field(default_factory=dict)
    unsure: list[tuple[int, int]] = field(default_factory=list)


def _moved_cells(
    ch: TabChanges,
    before: list[list[Cell]],
    now: list[list[Cell]],
    tz: tzinfo,
) -> _Moved:
    """The written cells of ``ch`` that landed in another row than the one
    read, and what to put back in each. A row is known by its ID where the
    write left that cell alone, else by what its other cells held (a row
    being given its ID)."""
    assert ch.id_column is not None
    ids = ch.id_column - 1
    deleted = _deleted(ch)
    written: dict[int, dict[int, Any]] = {}
    for (row, column), value in ch.cells.items():
        if row > 1:  # the header stays where it is
            written.setdefault(row, {})[column] = api_value(value, tz)
    moved = _Moved()
    known = ch.known_columns
    read: dict[frozenset[int], list[tuple[str, Any]]] = {}  # by the columns sent
    for row, sent in sorted(written.items()):
        landed = _moved_up(row, deleted)
        line = now[landed - 1] if landed <= len(now) else []
        wanted = _identity(line, sent, ids, known)
        read_there = before[row - 1] if row <= len(before) else []
        if _identity(read_there, sent, ids, known) == wanted:
            continue  # the row read: in place
        columns = frozenset(sent)
        if columns not in read:
            read[columns] = [_identity(was, sent, ids, known) for was in before[1:]]
        source = _source(read[columns], wanted)
        if (
            source is None
            and wanted[0] == "cells"
            and not deleted
            and _neighbours_stayed(row, before, now, written, ids, known)
        ):
            continue  # the row read, which a person typed into meanwhile
        for column, value in sorted(sent.items()):
            if not _same(_at(now, landed, column - 1), value):
                continue  # changed again since: left as it is
            if source is not None:
                was = _at(before, source, column - 1)
                moved.put_back[(landed, column)] = "" if was is None else was
            elif _only_written(line, sent):
                moved.put_back[(landed, column)] = ""  # a blank row put in
            else:
                moved.unsure.append((landed, column))
    return moved


def _identity(
    line: Sequence[Cell],
    sent: Mapping[int, Any],
    ids: int,
    known: frozenset[int] = frozenset(),
) -> tuple[str, Any]:
    """What tells row ``line`` from others, the cells a write sent to it
    aside: its ID, or else its other cells of the ``known`` columns (all
    where none are given)."""
    if ids + 1 not in sent and ids < len(line) and line[ids] not in (None, ""):
        return ("id", line[ids])
    return (
        "cells",
        tuple(
            (i, cell)
            for i, cell in enumerate(line)
            if i + 1 not in sent
            and (not known or i + 1 in known)
            and cell not in (None, "")
        ),
    )


def _neighbours_stayed(
    row: int,
    before: list[list[Cell]],
    now: list[list[Cell]],
    written: Mapping[int, Mapping[int, Any]],
    ids: int,
    known: frozenset[int],
) -> bool:
    """Whether the rows read just above and below ``row`` (a row known by its
    cells) are where they were, as they were: then no row was put in, taken
    out or moved there, and the row between is the one read, whatever a
    person typed into it meanwhile."""
    for other in (row - 1, row + 1):
        if other < 2:
            continue  # the header stays
        sent = written.get(other, {})
        was = before[other - 1] if other <= len(before) else []
        is_now = now[other - 1] if other <= len(now) else []
        if _identity(was, sent, ids, known) != _identity(is_now, sent, ids, known):
            return False
    return True


def _cells(names: list[str]) -> str:
    """Cells named in a message: the first ten."""
    return ", ".join(names[:10]) + (" …" if len(names) > 10 else "")


def _source(read: list[tuple[str, Any]], wanted: tuple[str, Any]) -> int | None:
    """The 1-based row, as ``read`` (the identities of the rows below the
    header), that the row known as ``wanted`` is now: the one read with its
    identity, if exactly one was."""
    if wanted == ("cells", ()):
        return None  # nothing tells a blank row from another
    found = [number for number, was in enumerate(read, 2) if was == wanted]
    return found[0] if len(found) == 1 else None


def _only_written(line: Sequence[Cell], sent: Mapping[int, Any]) -> bool:
    """Whether ``line`` holds nothing but what a write sent to one row: a
    blank row someone put in, which the write filled."""
    filled = {i + 1: cell for i, cell in enumerate(line) if cell not in (None, "")}
    return filled.keys() <= sent.keys() and all(
        _same(cell, sent[column]) for column, cell in filled.items()
    )


def _span_to_check(ch: TabChanges, before: list[list[Cell]]) -> tuple[int, int] | None:
    """The rows (first, last, where the write left them) to read back: those
    it wrote cells into, and one more each side."""
    if not _rows_to_check(ch, before):
        return None
    # Deletes move a row up by at most their number; a row's neighbours
    # are read too (see _neighbours_stayed).
    first = min(row for row, _ in ch.cells) - len(ch.delete_rows) - 1
    return max(2, first), max(row for row, _ in ch.cells) + 1


def _first_appended(ch: TabChanges, before: list[list[Cell]]) -> int:
    """The row the first appended row went to, the write's deletes done."""
    last = last_row_after(before, ch.cells)
    return _moved_up(last + 1, _deleted(ch))


def _deleted(ch: TabChanges) -> list[int]:
    """The rows ``ch`` deletes, in order."""
    return sorted(set(ch.delete_rows))


def _moved_up(row: int, deleted: list[int]) -> int:
    """Where row ``row``, as read, is once the rows ``deleted`` are gone."""
    return row - bisect.bisect_left(deleted, row)


def _rows_to_check(ch: TabChanges, before: list[list[Cell]]) -> bool:
    """Whether ``ch`` writes cells into rows that held something when read."""
    if ch.id_column is None:
        return False
    return any(
        row > 1 and any(cell not in (None, "") for cell in before[row - 1])
        for row, _ in ch.cells
        if row <= len(before)
    )


def _at(rows: list[list[Cell]], number: int, index: int) -> Cell:
    """The cell at a 1-based row and a 0-based column, None past the data."""
    if number > len(rows) or index >= len(rows[number - 1]):
        return None
    return rows[number - 1][index]


def _same(read: Cell, written: Any) -> bool:
    """Whether a cell read back holds what a RAW write put there."""
    if read is None or read == "":
        return written is None or written == ""
    if isinstance(read, int | float) and isinstance(written, int | float):
        return math.isclose(read, written, rel_tol=1e-12, abs_tol=1e-9)
    return bool(read == written)


def _runs(rows_desc: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs of descending row numbers as (first, last) ascending."""
    start = end = rows_desc[0]
    for row in rows_desc[1:]:
        if row == start - 1:
            start = row
            continue
        yield start, end
        start = end = row
    yield start, end
