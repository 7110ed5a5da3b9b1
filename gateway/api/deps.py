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


# Query parameters clients use to pass keys in URLs, where proxies and access logs would keep them.
KEY_QUERY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token"})


def get_principal(request: Request, state: StateDep) -> Principal:
    """The caller of ``Authorization: Bearer <key>``; 401 when the key is missing or unknown, or
    when a key is sent in the query string (refused even when the header is right)."""
    if any(name.lower() in KEY_QUERY_PARAMS for name in request.query_params):
        raise OpenAIError(
            401,
            "API keys are not accepted in the URL. Send the key as 'Authorization: Bearer <key>', "
            "and consider it exposed.",
            type="invalid_request_error",
            code="key_in_query",
        )
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
