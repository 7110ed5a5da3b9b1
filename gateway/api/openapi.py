"""What the OpenAPI schema says each route answers: the OpenAI error body with its real status codes.

FastAPI would document a 422 for every route with a body or parameters; busstop answers 400 (as
OpenAI does), so the 422 entries are dropped and each route lists the errors it can give instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error busstop answers, whatever the status: OpenAI's shape."""

    error: ErrorDetail


_WHY = {
    400: "Invalid request: a field is missing, malformed or out of bounds (``param`` names it)",
    401: "No API key, an unknown one, or a key in the URL",
    403: "The key's traffic class may not use this route",
    404: "No such model, file, batch, or stream to resume",
    409: "The object is in a state that does not allow this",
    413: "The body is over the gateway's limit",
    429: "Over the key's rate or concurrency limit (see Retry-After)",
    500: "The request failed while it was generated (it is not retried)",
    502: "A worker sent a reply the gateway cannot read",
    503: "Redis is unreachable, no worker serves the model, or the class queue is full",
    504: "The worker went silent",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a route that can fail with ``statuses``."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


# Routes behind an API key, and the failures every one of them shares.
KEYED = (400, 401, 503)
INTERNAL = (*KEYED, 403)
# Chat and completions answer JSON, or an SSE stream with "stream": true.
GENERATION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion, or with `stream: true` its chunks as server-sent events",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    },
    **errors(*KEYED, 404, 413, 429, 500, 502, 504),
}


def install_openapi(app: FastAPI) -> None:
    """Serve a schema without FastAPI's 422 responses and their validation-error schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

# A stream resumed from its Last-Event-ID: the rest of its server-sent events.
RESUMED_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The stream's events after Last-Event-ID (all of them without it)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **errors(*KEYED, 404, 500, 502, 504),
}
