"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

FastAPI's own answers (validation 422, unknown route 404, method 405) and unexpected exceptions are
rewritten into the same shape; request validation problems answer 400, as OpenAI does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from shared.messages import ErrorInfo

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error the client gets as ``status`` with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.code = code
        self.headers = headers

    @classmethod
    def from_info(cls, info: ErrorInfo) -> OpenAIError:
        return cls(info.status, info.message, type=info.type, param=info.param, code=info.code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        """The JSON answer; ASCII-escaped, so no text a client sent can make rendering it fail."""
        content = json.dumps(self.body(), ensure_ascii=True, separators=(",", ":"))
        return Response(content, status_code=self.status, headers=self.headers, media_type="application/json")


def shorten(text: str, max_chars: int = 64) -> str:
    """A client-given name, cut to fit an error message."""
    return text if len(text) <= max_chars else f"{text[:max_chars]}... ({len(text)} characters)"


def redis_unavailable(exc: BaseException) -> OpenAIError:
    return OpenAIError(503, f"the request queue (Redis) is unreachable: {exc}", code="redis_unavailable")


# What pydantic puts in an error's location for the branch of a union it tried, not a field name.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_field(part: str) -> bool:
    """Fields are snake_case; a union's branch shows as a type or model name (``NamedToolChoice``)."""
    return (part != "body" and part not in _UNION_TAGS and not part[:1].isupper()
            and not any(c in part for c in "[(-"))


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if _is_field(str(p))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _msg(error: Any) -> str:
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def validation_error(exc: RequestValidationError | ValidationError) -> OpenAIError:
    """The 400 of a body that does not validate (FastAPI's, or a Batch API line's)."""
    errors = exc.errors()
    if not errors:
        return OpenAIError(400, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "the request body is not valid JSON", code="invalid_json")
    # A union field reports one error per branch it tried; the deepest says what is really wrong
    # (``stop[1]``'s bad text rather than "stop is not a string").
    field = _param(tuple(first.get("loc", ()))[:2])
    same_field = [e for e in errors if _param(tuple(e.get("loc", ()))[:2]) == field]
    first = max(same_field, key=lambda e: len([p for p in e.get("loc", ()) if _is_field(str(p))]))
    loc = tuple(first.get("loc", ()))
    param = _param(loc)
    if loc == ("body",) or param is None:
        return OpenAIError(400, f"invalid request body: {_msg(first)}")
    message = f"{param}: {_msg(first)}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return OpenAIError(400, message, param=param, code="invalid_value")


async def _openai_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc).response()


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    """The routes of the app and of the routers it includes (all are included without a prefix)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _leaf_routes(inner)
        elif isinstance(route, Route):
            yield route


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (a path can have one route per method)."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods - {"HEAD"}))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return OpenAIError(exc.status_code, str(exc.detail), headers=headers or None).response()


async def _redis_error(_: Request, exc: Exception) -> Response:
    logger.warning("redis unreachable: %s", exc)
    return redis_unavailable(exc).response()


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return OpenAIError(500, "internal server error", type="server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_error)
    app.add_exception_handler(RedisTimeoutError, _redis_error)
    app.add_exception_handler(Exception, _unexpected_error)
