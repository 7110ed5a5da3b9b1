"""Puts the ``x-ratelimit-*`` headers of a request's admission on its response, whatever route answers.

The admission step runs deep inside a route; the middleware hands each request a fresh dict through a
context variable, admission fills it, and the middleware adds it to the response's headers.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_headers: ContextVar[dict[str, str] | None] = ContextVar("ratelimit_headers", default=None)


def set_ratelimit_headers(headers: dict[str, str]) -> None:
    """Headers for the current request's response (a no-op outside an HTTP request)."""
    current = _headers.get()
    if current is not None:
        current.update(headers)


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        collected: dict[str, str] = {}
        token = _headers.set(collected)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and collected:
                headers = MutableHeaders(scope=message)
                for name, value in collected.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _headers.reset(token)
