"""Request dependencies, as ``Annotated`` aliases for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from gateway.core.auth import Principal
from gateway.core.errors import OpenAIError
from gateway.core.state import GatewayState


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_redis(state: StateDep) -> Redis:
    return state.redis


RedisDep = Annotated[Redis, Depends(get_redis)]


def get_principal(request: Request, state: StateDep) -> Principal:
    """The caller of ``Authorization: Bearer <key>``; 401 when the key is missing or unknown."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise OpenAIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            type="invalid_request_error",
        )
    principal = state.keys.authenticate(key)
    if principal is None:
        raise OpenAIError(
            401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"
        )
    return principal


ApiKeyDep = Annotated[Principal, Depends(get_principal)]
