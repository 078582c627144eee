"""JSON request bodies, read so that what the parser cannot take is an input
error like any other (422, where, and what was wrong), not a bare 400.

Numbers with a fraction or an exponent are read as :class:`~decimal.Decimal`,
as written: a premium of ``0.001`` or ``1e-400`` reaches its check with the
digits the client sent, not as the float they round to (``1e-400`` is 0.0,
``1e400`` infinity).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

# The largest body a client needs (a write-back of 100,000 records) is near
# 1 MB; a bigger one is refused before it is read whole.
MAX_BODY_BYTES = 4 * 1024 * 1024
# No field takes a number nearly this long (an amount has at most 13
# characters); longer ones are refused before they are converted at all.
MAX_NUMBER_LENGTH = 100
# Nor one with more digits than this before or after the point: turning
# 1e9999999 into a whole number would take seconds.
MAX_EXPONENT = 1_000


class UnreadableJson(HTTPException):
    """A body that is JSON by its type but that the app cannot read, in the
    shape of the app's other input errors."""

    def __init__(self, kind: str, message: str, field: str = "") -> None:
        where = ["body", field] if field else ["body"]
        detail = [{"loc": where, "field": field, "msg": message, "type": kind}]
        super().__init__(status_code=422, detail=detail)


class BodyTooLarge(HTTPException):
    def __init__(self, size: int) -> None:
        detail = [
            {
                "loc": ["body"],
                "field": "",
                "msg": f"the body is too large ({size:,} bytes or more; at most "
                f"{MAX_BODY_BYTES // (1024 * 1024)} MB)",
                "type": "body_too_large",
            }
        ]
        super().__init__(status_code=413, detail=detail)


def _too_long(text: str) -> UnreadableJson:
    shown = f"{text[:12]}…" if len(text) > 12 else text
    return UnreadableJson(
        "json_number_too_long",
        f"the body has a number too long ({shown}, {len(text):,} characters; "
        f"at most {MAX_NUMBER_LENGTH})",
    )


def _whole(text: str) -> int:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _too_long(text)
    return int(text)


def _fraction(text: str) -> Decimal:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _too_long(text)
    value = Decimal(text)
    if not -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise UnreadableJson(
            "json_number_out_of_range",
            f"the body has a number too large or too small ({text}; at most "
            f"{MAX_EXPONENT:,} digits before or after the point)",
        )
    return value


def _constant(name: str) -> None:
    raise UnreadableJson(
        "json_invalid", f"the body is not valid JSON ({name} is not a JSON number)"
    )


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    names = [name for name, _ in pairs]
    twice = next(name for name in names if names.count(name) > 1)
    raise UnreadableJson(
        "json_duplicate_key",
        f"the body gives {twice!r} twice; send each field once",
        field=twice,
    )


def read_json(body: bytes) -> Any:
    """The body's JSON value; :class:`UnreadableJson` for one not UTF-8 (UTF-16
    and UTF-32 included: JSON between systems is UTF-8), giving a name twice in
    one object, nested too deeply, holding a number too long, or being a
    number with a point or an exponent instead of an object (malformed JSON
    raises :class:`json.JSONDecodeError`, which FastAPI reports with its
    position)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise UnreadableJson(
            "json_not_utf8",
            f"the body is not valid UTF-8 JSON (byte {exc.start} is 0x{byte}); "
            "send the text encoded as UTF-8",
        ) from None
    if "\x00" in text:  # UTF-16 or UTF-32 of ASCII text decodes without error
        raise UnreadableJson(
            "json_not_utf8",
            f"the body is not valid UTF-8 JSON (byte {body.index(0)} is 0x00, as "
            "in UTF-16 or UTF-32); send the text encoded as UTF-8",
        )
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_whole,
            parse_float=_fraction,
            parse_constant=_constant,
        )
    except RecursionError:
        raise UnreadableJson(
            "json_too_deep", "the body is nested too deeply to read"
        ) from None
    if isinstance(value, Decimal):
        # A model reads an object that is no dict by its attributes, and a
        # Decimal has none of the fields: it would pass as the empty body {}.
        raise UnreadableJson(
            "model_attributes_type", "the body must be a JSON object, {…}"
        )
    return value


class JsonRequest(Request):
    async def body(self) -> bytes:
        """The body, refused once it is past MAX_BODY_BYTES: by its declared
        length at once, or as it arrives when it is sent in chunks."""
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise BodyTooLarge(int(declared))
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise BodyTooLarge(size)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = read_json(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body is read by :func:`read_json`, and which refuses
    a query parameter it does not take, as a body refuses an unknown field: a
    filter misspelt or not offered would otherwise be left out in silence.
    For the same reason a route that takes no body refuses one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        takes = _query_names(self.dependant)
        takes_body = self.body_field is not None

        async def route_handler(request: Request) -> Response:
            errors = _query_errors(request, takes)
            if errors:
                raise RequestValidationError(errors)
            json_request = JsonRequest(request.scope, request.receive)
            if not takes_body:
                _refuse_a_body(await json_request.body(), takes)
            return await handle(json_request)

        return route_handler


NO_BODY = "this request takes no body"


def _refuse_a_body(body: bytes, query: list[str]) -> None:
    """Refuse a body sent to a request that takes none, naming each field it
    gives (and where one the query takes goes instead); nothing, or only
    ``{}``, passes."""
    if not body.strip():
        return
    try:
        value = read_json(body)
    except (UnreadableJson, ValueError):
        value = None
    if value == {}:
        return
    if not isinstance(value, dict):
        raise UnreadableJson("body_not_taken", NO_BODY)
    detail = []
    for name in value:
        message = f"is not a field of this request: {NO_BODY}"
        if name in query:
            message += f"; send {name} in the query, ?{name}=…"
        detail.append(
            {
                "loc": ["body", name],
                "field": name,
                "msg": message,
                "type": "body_not_taken",
            }
        )
    raise HTTPException(status_code=422, detail=detail)


def _query_names(dependant: Dependant) -> list[str]:
    """The query parameters a route and its dependencies take, in order."""
    names = [field.alias for field in dependant.query_params]
    for needed in dependant.dependencies:
        names += [name for name in _query_names(needed) if name not in names]
    return names


def _query_errors(request: Request, takes: list[str]) -> list[dict[str, Any]]:
    """A query parameter the route does not take, or one given twice (only
    one would count, as a body's field given twice would), each named."""
    given = [name for name, _ in request.query_params.multi_items()]
    garbled = _not_utf8(request.scope.get("query_string", b""))
    listed = ", ".join(takes) if takes else "none"
    errors = []
    for name in dict.fromkeys(given):
        if name not in takes:
            message = f"is not a parameter of this request; it takes {listed}"
        elif given.count(name) > 1:
            message = "is given more than once; send it once"
        elif name in garbled:
            message = "is not text: its bytes are not UTF-8; send it UTF-8 encoded"
        else:
            continue
        errors.append(
            {"type": "query_parameter", "loc": ("query", name), "msg": message}
        )
    return errors


def _not_utf8(query: bytes) -> set[str]:
    """The parameters whose values, decoded from the URL, are not UTF-8 (which
    would otherwise reach the app with each bad byte replaced by \ufffd)."""
    names = set()
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            unquote_to_bytes(value.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            names.add(
                unquote_to_bytes(name.replace(b"+", b" ")).decode(errors="replace")
            )
    return names
