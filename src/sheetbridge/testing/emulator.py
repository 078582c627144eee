"""A local emulator of the Google Sheets API v4 (plus Drive create/delete).

It serves in-memory spreadsheets over HTTP with the real service's URL layout,
JSON shapes and error bodies, so the Google backend can be tested without
Google. Knobs imitate what makes the real service hard: latency, per-project
and per-user request quotas (429 ``RESOURCE_EXHAUSTED``), random 500/503s,
injected faults and a required bearer token. It also serves an OAuth token
endpoint (``POST /token``) so google-auth credentials can refresh locally.

Use it in tests with :class:`EmulatorServer` (a real server on 127.0.0.1 in a
thread) or from the command line with :func:`serve`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import random
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sheetbridge.testing.model import (
    ApiError,
    Json,
    Spreadsheet,
    invalid,
    new_spreadsheet,
)

logger = logging.getLogger(__name__)

_ID_CHARS = string.ascii_letters + string.digits + "-_"
_RENDER = ("FORMATTED_VALUE", "UNFORMATTED_VALUE", "FORMULA")
_DATE_RENDER = ("SERIAL_NUMBER", "FORMATTED_STRING")


@dataclass
class Knobs:
    """Behaviour settings; change them at any time, also while serving.

    Quotas count requests in a sliding window of ``quota_window_s`` seconds
    (60 like the real service; tests shorten it). ``None`` means unlimited.
    """

    latency_ms: float = 0.0
    read_quota_per_project: int | None = None
    write_quota_per_project: int | None = None
    read_quota_per_user: int | None = None
    write_quota_per_user: int | None = None
    quota_window_s: float = 60.0
    send_retry_after: bool = True
    error_rate: float = 0.0
    required_token: str | None = None
    require_auth: bool = False


@dataclass
class Fault:
    """A one-off answer injected into matching requests: the ``count`` after
    the first ``skip`` of them."""

    status: int
    count: int = 1
    method: str | None = None
    path_contains: str | None = None
    message: str | None = None  # else the service's own words for the status
    skip: int = 0

    def matches(self, method: str, path: str) -> bool:
        """True when this fault applies to the request."""
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )

    def error(self) -> ApiError:
        """The answer, as the service gives it: a 429 as its quota error, with
        a Retry-After of a second."""
        if self.status == 429:
            return _QuotaExceeded(self.message or _FAULT_QUOTA_MESSAGE, 1.0)
        message = self.message or _FAULT_MESSAGES.get(self.status, "Unknown error.")
        return ApiError(self.status, message)


_FAULT_QUOTA_MESSAGE = (
    "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' "
    "of service 'sheets.googleapis.com' for consumer 'project_number:000000000000'."
)
_FAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


@dataclass
class LoggedRequest:
    """One request the emulator received and how it answered."""

    method: str
    path: str
    status: int
    user: str


@dataclass
class EmulatorState:
    """Everything the emulator holds: spreadsheets, knobs, tokens and a log."""

    knobs: Knobs = field(default_factory=Knobs)
    spreadsheets: dict[str, Spreadsheet] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    seed: int | None = None
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- helpers for tests and the CLI ---------------------------------------

    def create(self, title: str = "Untitled spreadsheet", **props: Any) -> Spreadsheet:
        """Create a spreadsheet directly (like ``POST /v4/spreadsheets``)."""
        body = {"properties": {"title": title, **props}}
        with self._lock:
            book = new_spreadsheet(self._new_id(), body)
            self.spreadsheets[book.spreadsheet_id] = book
        return book

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        skip: int = 0,
    ) -> Fault:
        """Answer ``count`` matching requests with ``status``, after letting
        the next ``skip`` of them through."""
        fault = Fault(status, count, method, path_contains, skip=skip)
        with self._lock:
            self.faults.append(fault)
        return fault

    def share(self, spreadsheet_id: str, *principals: str) -> None:
        """Restrict a spreadsheet to these principals (emails or tokens)."""
        book = self.spreadsheets[spreadsheet_id]
        book.shared_with = set(principals)

    def calls(self, method: str | None = None, contains: str = "") -> int:
        """How many logged requests match (``sheets`` calls only)."""
        return sum(
            1
            for entry in self.log
            if (method is None or entry.method == method) and contains in entry.path
        )

    def reset_quota(self) -> None:
        """Forget the requests counted against quotas."""
        with self._lock:
            self._windows.clear()

    def _new_id(self) -> str:
        return "".join(self.rng.choice(_ID_CHARS) for _ in range(44))

    # -- per-request policy ----------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.count > 0 and fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.count -= 1
                    return fault
            self.faults = [fault for fault in self.faults if fault.count > 0]
        return None

    def _charge_quota(self, user: str, is_read: bool) -> None:
        knobs = self.knobs
        kind = "Read" if is_read else "Write"
        limits = (
            (
                "project",
                knobs.read_quota_per_project
                if is_read
                else knobs.write_quota_per_project,
                f"{kind} requests per minute",
            ),
            (
                f"user:{user}",
                knobs.read_quota_per_user if is_read else knobs.write_quota_per_user,
                f"{kind} requests per minute per user",
            ),
        )
        now = time.monotonic()
        with self._lock:
            windows = []
            for key, limit, label in limits:
                if limit is None:
                    continue
                window = self._windows.setdefault(f"{kind}:{key}", deque())
                while window and window[0] <= now - knobs.quota_window_s:
                    window.popleft()
                if len(window) >= limit:
                    oldest = window[0] if window else now  # a quota of none
                    retry_after = oldest + knobs.quota_window_s - now
                    raise _QuotaExceeded(
                        f"Quota exceeded for quota metric '{kind} requests' and limit "
                        f"'{label}' of service 'sheets.googleapis.com' for consumer "
                        "'project_number:000000000000'.",
                        retry_after,
                    )
                windows.append(window)
            for window in windows:
                window.append(now)


_KNOB_FIELDS = [knob.name for knob in dataclasses.fields(Knobs)]


_CHECKED = ConfigDict(extra="forbid", allow_inf_nan=False)
# Each knob as JSON gives it, not coerced: ``true`` is no latency, "yes" no flag.
_QUOTA = Field(default=None, ge=0, strict=True)


@pydantic_dataclass(config=_CHECKED)
class _CheckedKnobs(Knobs):
    """Knobs as a control request may set them: of the right types, in range."""

    latency_ms: float = Field(default=0.0, ge=0, le=600_000, strict=True)
    read_quota_per_project: int | None = _QUOTA
    write_quota_per_project: int | None = _QUOTA
    read_quota_per_user: int | None = _QUOTA
    write_quota_per_user: int | None = _QUOTA
    quota_window_s: float = Field(default=60.0, gt=0, strict=True)
    send_retry_after: bool = Field(default=True, strict=True)
    error_rate: float = Field(default=0.0, ge=0, le=1, strict=True)
    required_token: str | None = Field(default=None, strict=True)
    require_auth: bool = Field(default=False, strict=True)


@pydantic_dataclass(config=_CHECKED)
class _CheckedFault(Fault):
    status: int = Field(ge=400, le=599, strict=True)
    count: int = Field(default=1, ge=1, strict=True)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = None
    skip: int = Field(default=0, ge=0, strict=True)


_KNOBS: TypeAdapter[Knobs] = TypeAdapter(_CheckedKnobs)
_FAULT: TypeAdapter[Fault] = TypeAdapter(_CheckedFault)


async def _control_body(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return _control_error("the body is not JSON")
    if not isinstance(body, dict):
        return _control_error("the body must be a JSON object")
    return body


def _control_error(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


def _first_problem(refused: ValidationError) -> str:
    error = refused.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']} (got {error['input']!r})"


class _QuotaExceeded(ApiError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(429, message, "RESOURCE_EXHAUSTED")
        self.retry_after_s = retry_after_s


def build_app(state: EmulatorState | None = None) -> Starlette:
    """The emulator as an ASGI app; ``app.state.emulator`` is its state."""
    state = state or EmulatorState()
    handler = _Handler(state)
    app = Starlette(
        routes=[
            Route("/token", handler.token, methods=["POST"]),
            Route("/v4/spreadsheets", handler.dispatch, methods=["POST"]),
            Route(
                "/v4/spreadsheets/{rest:path}",
                handler.dispatch,
                methods=["GET", "POST", "PUT"],
            ),
            Route("/drive/v3/files", handler.dispatch, methods=["POST"]),
            Route("/drive/v3/files/{file_id}", handler.dispatch, methods=["DELETE"]),
            # The emulator's own controls, at an address Google has no such
            # thing at: knobs changed while it serves, faults injected.
            Route("/_emulator/knobs", handler.knobs, methods=["GET", "PATCH"]),
            Route(
                "/_emulator/faults", handler.fault, methods=["GET", "POST", "DELETE"]
            ),
        ]
    )
    app.state.emulator = state
    return app


class _Handler:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def token(self, request: Request) -> Response:
        """OAuth token endpoint for service accounts and authorized users."""
        form = await request.form()
        grant = str(form.get("grant_type", ""))
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            principal = _jwt_issuer(str(form.get("assertion", "")))
        elif grant == "refresh_token":
            principal = f"user:{form.get('client_id', '')}"
        else:
            principal = None
        if not principal:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        access_token = "emu-" + secrets.token_urlsafe(16)
        self.state.tokens[access_token] = principal
        return JSONResponse(
            {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}
        )

    async def knobs(self, request: Request) -> Response:
        """The knobs as JSON; a PATCH changes those it names, all or none."""
        if request.method == "PATCH":
            body = await _control_body(request)
            if isinstance(body, Response):
                return body
            unknown = sorted(set(body) - set(_KNOB_FIELDS))
            if unknown:
                return _control_error(
                    f"unknown knob {unknown[0]!r}; knobs: {', '.join(_KNOB_FIELDS)}"
                )
            merged = dataclasses.asdict(self.state.knobs) | body
            try:
                self.state.knobs = _KNOBS.validate_python(merged)
            except ValidationError as exc:
                return _control_error(_first_problem(exc))
        return JSONResponse(dataclasses.asdict(self.state.knobs))

    async def fault(self, request: Request) -> Response:
        """Inject a fault (POST ``{"status", "count", "method", "path_contains",
        "message", "skip"}``, all but the status optional); list those waiting (GET)
        or clear them (DELETE, answering those it cleared)."""
        if request.method in ("GET", "DELETE"):
            with self.state._lock:
                waiting = [f for f in self.state.faults if f.count > 0]
                if request.method == "DELETE":
                    self.state.faults = []
            return JSONResponse([dataclasses.asdict(fault) for fault in waiting])
        body = await _control_body(request)
        if isinstance(body, Response):
            return body
        try:
            fault = _FAULT.validate_python(body)
        except ValidationError as exc:
            return _control_error(_first_problem(exc))
        with self.state._lock:
            self.state.faults.append(fault)
        return JSONResponse(dataclasses.asdict(fault))

    async def dispatch(self, request: Request) -> Response:
        """Authenticate, apply knobs, route, and answer errors like the service."""
        state = self.state
        method, path = request.method, request.url.path
        user = "anonymous"
        try:
            # The body first: a call whose client stops waiting for the answer
            # is still carried out, as by the service.
            await request.body()
            if state.knobs.latency_ms > 0:
                await asyncio.sleep(state.knobs.latency_ms / 1000)
            user = self._authenticate(request)
            fault = state._take_fault(method, path)
            if fault is not None:
                raise fault.error()
            if state.knobs.error_rate and state.rng.random() < state.knobs.error_rate:
                status = state.rng.choice((500, 503))
                raise ApiError(
                    status,
                    "Internal error encountered."
                    if status == 500
                    else "The service is currently unavailable.",
                )
            if path.startswith("/v4/"):
                state._charge_quota(user, is_read=method == "GET")
            body = await _json_body(request)
            with state._lock:
                answer = self._route(request, user, body)
            fields = request.query_params.get("fields")
            if answer is not None and fields:
                answer = project(answer, parse_field_mask(fields))
            status = 204 if answer is None else 200
            response: Response = (
                Response(status_code=204) if answer is None else JSONResponse(answer)
            )
        except ApiError as exc:
            status = exc.code
            response = JSONResponse(exc.body(), status_code=exc.code)
            if isinstance(exc, _QuotaExceeded) and state.knobs.send_retry_after:
                response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        state.log.append(LoggedRequest(method, path, status, user))
        logger.debug(
            "emulator.request", extra={"method": method, "path": path, "status": status}
        )
        return response

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        knobs = self.state.knobs
        if token and token in self.state.tokens:
            return self.state.tokens[token]
        if knobs.required_token is not None and token == knobs.required_token:
            return token
        if knobs.required_token is not None or knobs.require_auth:
            if not token:
                raise ApiError(
                    401,
                    "Request is missing required authentication credential. Expected "
                    "OAuth 2 access token, login cookie or other valid authentication "
                    "credential.",
                )
            raise ApiError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
            )
        return token or "anonymous"

    def _route(self, request: Request, user: str, body: Json) -> Json | None:
        path = request.url.path
        method = request.method
        if path.startswith("/drive/v3/files"):
            return self._drive(method, path, user, body)
        if path == "/v4/spreadsheets":
            book = new_spreadsheet(self.state._new_id(), body)
            self.state.spreadsheets[book.spreadsheet_id] = book
            return book.resource()
        rest = path[len("/v4/spreadsheets/") :]
        head, _, tail = rest.partition("/")
        book_id, _, action = head.partition(":")
        book = self._open(book_id, user)
        params = request.query_params
        if not tail:
            if action == "batchUpdate" and method == "POST":
                replies = book.batch_update(body.get("requests", []), self.state.rng)
                answer: Json = {
                    "spreadsheetId": book.spreadsheet_id,
                    "replies": replies,
                }
                if body.get("includeSpreadsheetInResponse"):
                    answer["updatedSpreadsheet"] = book.resource()
                return answer
            if not action and method == "GET":
                return book.resource()
        elif tail.startswith("values"):
            return self._values(book, method, tail[len("values") :], params, body)
        raise ApiError(404, f"Method not found: {method} {path}")

    def _open(self, book_id: str, user: str) -> Spreadsheet:
        book = self.state.spreadsheets.get(book_id)
        if book is None:
            raise ApiError(404, "Requested entity was not found.")
        if book.shared_with is not None and user not in book.shared_with:
            raise ApiError(403, "The caller does not have permission")
        return book

    def _values(
        self, book: Spreadsheet, method: str, rest: str, params: Any, body: Json
    ) -> Json:
        render = _choice(params.get("valueRenderOption"), _RENDER, "valueRenderOption")
        dates = _choice(
            params.get("dateTimeRenderOption"), _DATE_RENDER, "dateTimeRenderOption"
        )
        major = _choice(
            params.get("majorDimension"), ("ROWS", "COLUMNS"), "majorDimension"
        )
        read = {"value_render": render, "date_render": dates, "major": major}
        if rest == ":batchGet" and method == "GET":
            ranges = params.getlist("ranges")
            return {
                "spreadsheetId": book.spreadsheet_id,
                "valueRanges": [book.get_values(text, **read) for text in ranges],
            }
        if rest == ":batchUpdate" and method == "POST":
            return self._batch_update_values(book, body)
        if rest == ":batchClear" and method == "POST":
            ranges = [book.clear_values(text) for text in body.get("ranges", [])]
            return {"spreadsheetId": book.spreadsheet_id, "clearedRanges": ranges}
        if not rest.startswith("/"):
            raise ApiError(404, f"Method not found: values{rest}")
        text = rest[1:]
        if text.endswith(":append") and method == "POST":
            return book.append_values(
                text[: -len(":append")],
                body.get("values") or [],
                user_entered=_input_option(params.get("valueInputOption")),
                insert_rows=params.get("insertDataOption") == "INSERT_ROWS",
                major=body.get("majorDimension") or "ROWS",
            )
        if text.endswith(":clear") and method == "POST":
            cleared = book.clear_values(text[: -len(":clear")])
            return {"spreadsheetId": book.spreadsheet_id, "clearedRange": cleared}
        if method == "GET":
            return book.get_values(text, **read)
        if method == "PUT":
            return book.update_values(
                text,
                body.get("values") or [],
                user_entered=_input_option(params.get("valueInputOption")),
                major=body.get("majorDimension") or "ROWS",
            )
        raise ApiError(404, f"Method not found: {method} values/{text}")

    def _batch_update_values(self, book: Spreadsheet, body: Json) -> Json:
        user_entered = _input_option(body.get("valueInputOption"))
        data = body.get("data") or []
        plans = [  # check every range first: the call is atomic
            book.plan_update(
                item.get("range", ""),
                item.get("values") or [],
                major=item.get("majorDimension") or "ROWS",
            )
            for item in data
        ]
        responses = [
            book.apply_update(plan, user_entered=user_entered) for plan in plans
        ]
        answer: Json = {"spreadsheetId": book.spreadsheet_id}
        rows, cols, sheets = set(), set(), set()
        for sheet, row, col, values in plans:
            for offset, line in enumerate(values):
                for index, value in enumerate(line):
                    if value is not None:
                        rows.add((sheet.sheet_id, row + offset))
                        cols.add((sheet.sheet_id, col + index))
                        sheets.add(sheet.sheet_id)
        if rows:
            answer.update(
                totalUpdatedRows=len(rows),
                totalUpdatedColumns=len(cols),
                totalUpdatedCells=sum(r.get("updatedCells", 0) for r in responses),
                totalUpdatedSheets=len(sheets),
            )
        answer["responses"] = responses
        return answer

    def _drive(self, method: str, path: str, user: str, body: Json) -> Json | None:
        if method == "POST":
            book = new_spreadsheet(
                self.state._new_id(), {"properties": {"title": body.get("name")}}
            )
            self.state.spreadsheets[book.spreadsheet_id] = book
            return {
                "kind": "drive#file",
                "id": book.spreadsheet_id,
                "name": book.title,
                "mimeType": "application/vnd.google-apps.spreadsheet",
            }
        file_id = path.rsplit("/", 1)[-1]
        self._open(file_id, user)
        del self.state.spreadsheets[file_id]
        return None


FieldMask = dict[str, "FieldMask | None"]


def parse_field_mask(mask: str) -> FieldMask:
    """Parse ``a.b,c(d,e/f)`` into a tree of field names (``None`` = everything)."""
    tree, rest = _mask_list(mask.replace(" ", ""))
    if rest:
        raise invalid(f"Invalid field selection {mask}")
    return tree


def _mask_list(text: str) -> tuple[FieldMask, str]:
    tree: FieldMask = {}
    while text:
        name_end = len(text)
        for index, char in enumerate(text):
            if char in ",()":
                name_end = index
                break
        path = [part for part in text[:name_end].replace("/", ".").split(".") if part]
        text = text[name_end:]
        sub: FieldMask | None = None
        if text.startswith("("):
            sub, text = _mask_list(text[1:])
            if not text.startswith(")"):
                raise invalid("Invalid field selection: unbalanced parentheses")
            text = text[1:]
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        if path:
            node[path[-1]] = sub
        if text.startswith(","):
            text = text[1:]
        elif text.startswith(")") or not text:
            return tree, text
    return tree, text


def project(value: Any, mask: FieldMask | None) -> Any:
    """Keep only the fields a mask selects (lists are projected item by item)."""
    if mask is None:
        return value
    if isinstance(value, list):
        return [project(item, mask) for item in value]
    if not isinstance(value, dict):
        return value
    return {key: project(value[key], sub) for key, sub in mask.items() if key in value}


async def _json_body(request: Request) -> Json:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    return body


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str:
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise invalid(f"Invalid value at '{name}' (\"{value}\")")
    return value


def _input_option(value: str | None) -> bool:
    if value not in ("RAW", "USER_ENTERED"):
        raise invalid("'valueInputOption' is required but not specified")
    return value == "USER_ENTERED"


def _jwt_issuer(assertion: str) -> str | None:
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
    except (IndexError, ValueError, binascii.Error):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


class EmulatorServer:
    """The emulator on 127.0.0.1 in a background thread (for tests and benches).

    Use as a context manager; ``base_url`` is where it listens and ``state``
    the live :class:`EmulatorState`.
    """

    def __init__(self, state: EmulatorState | None = None, *, port: int = 0) -> None:
        self.state = state or EmulatorState()
        self.app = build_app(self.state)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="sheets-emulator", daemon=True
        )
        self.port = port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmulatorServer:
        """Start serving and wait until the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Sheets emulator did not start")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    port: int,
    *,
    host: str = "127.0.0.1",
    knobs: Knobs | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the emulator in the foreground until interrupted.

    This is what ``sheetbridge emulator --port N`` calls.
    """
    state = EmulatorState(knobs=knobs or Knobs())
    if on_ready is not None:
        on_ready(f"http://{host}:{port}")
    uvicorn.run(build_app(state), host=host, port=port, log_level="info")
