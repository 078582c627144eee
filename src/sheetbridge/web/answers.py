"""JSON answers made in the endpoint's own thread.

FastAPI checks a plain endpoint's returned value against its response model in
a second trip to the threadpool; each trip is another wait for a thread and
the interpreter lock on a busy server. An endpoint that returns a
:class:`JsonAnswer` has serialised its value already, and FastAPI sends it as
it is. The response model stays in the route for the API's documentation.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import Response


class JsonAnswer(Response):
    """A value (dicts, lists, pydantic models, dates, decimals) as JSON."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return to_json(content)
