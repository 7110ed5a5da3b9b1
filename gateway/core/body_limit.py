"""A cap on request bodies, enforced while they arrive: a huge body is refused before it is read.

The Files API has its own, larger limit (its route checks it); every other route takes JSON bodies
that are far smaller than ``max_body_bytes``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.errors import OpenAIError

UNLIMITED_PATHS = ("/v1/files",)


def too_large(max_bytes: int) -> OpenAIError:
    return OpenAIError(
        413, f"the request body is larger than the limit of {max_bytes} bytes", code="request_too_large"
    )


class BodyLimitMiddleware:
    """Reads the limit from the settings in force (``max_body_bytes``), known once the app started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
        if scope["type"] != "http" or state is None or scope["path"].startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        max_bytes: int = state.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await too_large(max_bytes).response()(scope, receive, send)
            return
        num_received = 0
        is_refused = False

        async def counted_receive() -> Message:
            """Counts the body; past the limit, answers 413 and tells the app the client left."""
            nonlocal num_received, is_refused
            if is_refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                num_received += len(message.get("body", b""))
                if num_received > max_bytes:
                    is_refused = True
                    await too_large(max_bytes).response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not is_refused:  # after the 413, whatever the app still says goes nowhere
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
