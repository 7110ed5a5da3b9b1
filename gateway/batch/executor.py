"""What a batch needs from the serving path: turning a line's body into a request, and the events of
its reply into an OpenAI response body. The serving code implements it, so a batch line is answered
exactly as the same request sent to the endpoint would be."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.transport.generation import Generation
from shared.messages import GenerateRequest, ReplyEvent


class LineExecutor(Protocol):
    async def build(self, endpoint: str, body: dict[str, Any], req_id: str, tenant: str) -> GenerateRequest:
        """The batch-class request for a line; raises ``OpenAIError`` (e.g. 400, 404) if it cannot run."""
        ...

    def generation(self, request: GenerateRequest) -> Generation:
        """The transport that carries ``request`` to a worker and back, as for any request."""
        ...

    def respond(
        self, endpoint: str, request: GenerateRequest, events: list[ReplyEvent]
    ) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of the finished request (events end with DONE or ERROR)."""
        ...
