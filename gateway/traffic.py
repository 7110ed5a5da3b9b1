"""Which traffic class a request travels in, and whether it may enter now.

``traffic_class`` is the single place that maps a key and a request onto a request stream.
``Admission`` is the hook rate limits plug into: ``admit`` runs after validation and before the
request is queued (raise ``OpenAIError(429, ..., headers={"Retry-After": ...})`` to refuse), and
the returned ``Lease`` is released exactly once when the request ends, with its usage if known.
"""

from __future__ import annotations

from typing import Protocol

from gateway.core.auth import KeyClass, Principal
from gateway.core.errors import OpenAIError
from shared.messages import GenerateRequest, TrafficClass, Usage

TRAFFIC_CLASS_HEADER = "x-busstop-traffic-class"


def traffic_class(principal: Principal, header: str | None, priority: int) -> TrafficClass:
    """Public keys are interactive. Internal keys are batch, or priority when they ask for it with
    the header (``priority``) or a vLLM ``priority`` below 0 (lower is sooner)."""
    if principal.key_class is KeyClass.PUBLIC:
        return TrafficClass.INTERACTIVE
    if header is not None:
        try:
            asked = TrafficClass(header.strip().lower())
        except ValueError:
            names = ", ".join(c.value for c in TrafficClass)
            raise OpenAIError(
                400, f"{TRAFFIC_CLASS_HEADER} must be one of {names}", param=TRAFFIC_CLASS_HEADER
            ) from None
        return TrafficClass.BATCH if asked is TrafficClass.BATCH else TrafficClass.PRIORITY
    return TrafficClass.PRIORITY if priority < 0 else TrafficClass.BATCH


class Lease(Protocol):
    @property
    def slot(self) -> tuple[str, str] | None: ...  # the concurrency slot held: (in-flight set, member)
    async def release(self, usage: Usage | None) -> None: ...


class Admission(Protocol):
    async def admit(self, principal: Principal, request: GenerateRequest, num_choices: int = 1) -> Lease: ...
