"""From a validated OpenAI request to an accepted generation (or the error that stops it)."""

from __future__ import annotations

import contextlib
import time
import uuid

import anyio
from fastapi import Request

from gateway.core.auth import Principal
from gateway.core.errors import OpenAIError, shorten
from gateway.core.state import GatewayState
from gateway.telemetry.request import CLIENT_CLOSED
from gateway.traffic import TRAFFIC_CLASS_HEADER, Lease, traffic_class
from gateway.transport.generation import Generation, no_live_worker
from shared.messages import ChatMessage, GenerateRequest, ReplyEvent, SamplingOptions
from shared.retry import REDIS_ERRORS


def new_req_id() -> str:
    return uuid.uuid4().hex


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{shorten(model)}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


async def known_window(state: GatewayState, model: str) -> int | None:
    """The context window of ``model``'s live workers, None while none is live; 404 for a model nobody
    serves (no live worker, not in ``BUSSTOP_MODELS``, no request streams)."""
    live = await state.workers.live()
    if live.has_model(model):
        return live.max_model_len(model)
    if model not in state.settings.models and not await state.workers.has_request_streams(model):
        raise model_not_found(model)
    return None


async def max_model_len(state: GatewayState, model: str) -> int:
    """The context window of ``model``'s live workers; 404 for a model nobody serves, 503 when its
    workers are all down for longer than ``worker_wait_s``."""
    window = await known_window(state, model)
    if window is not None:
        return window
    if not await state.workers.wait_for(model, state.settings.worker_wait_s):
        raise no_live_worker(model)
    return (await state.workers.live()).max_model_len(model) or 1


def context_length_exceeded(window: int, num_tokens: int, param: str, at_least: bool) -> OpenAIError:
    return OpenAIError(
        400,
        f"This model's maximum context length is {window} tokens. However, your prompt has "
        f"{'at least ' if at_least else ''}{num_tokens} tokens, which leaves no room for the completion. "
        "Please shorten the prompt.",
        param=param,
        code="context_length_exceeded",
    )


async def refuse_overlong_prompt(
    state: GatewayState, model: str, window: int, param: str, num_bytes: int = 0, num_token_ids: int = 0
) -> None:
    """A 400 before anything is queued for a prompt that cannot fit ``window``: token ids are counted,
    and text of ``num_bytes`` UTF-8 bytes has at least ``num_bytes / max_token_bytes`` tokens."""
    if num_token_ids >= window:
        raise context_length_exceeded(window, num_token_ids, param, at_least=False)
    max_token_bytes = (await state.workers.live()).max_token_bytes(model)
    if max_token_bytes and (at_least := -(-num_bytes // max_token_bytes)) >= window:
        raise context_length_exceeded(window, at_least, param, at_least=True)


async def start_generation(
    state: GatewayState,
    http: Request,
    principal: Principal,
    req_id: str,
    model: str,
    sampling: SamplingOptions,
    priority: int,
    *,
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    prompt_token_ids: list[int] | None = None,
) -> tuple[Generation, ReplyEvent, Lease]:
    """Admit, queue and wait for acceptance; the lease is released here if that fails."""
    request = GenerateRequest(
        req_id=req_id,
        model=model,
        traffic_class=traffic_class(principal, http.headers.get(TRAFFIC_CLASS_HEADER), priority),
        tenant=principal.tenant,
        messages=messages,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids,
        sampling=sampling,
        arrival_time=time.time(),
        traceparent=http.headers.get("traceparent"),
    )
    lease = await state.admission.admit(principal, request)
    generation = Generation(state.redis, state.workers, state.settings, request)
    try:
        accepted = await generation.start()
    except BaseException as exc:
        if isinstance(exc, OpenAIError):
            generation.telemetry.finish(exc.status)
        else:  # Redis failed (the client is told 503), or the client went away
            generation.telemetry.finish(503 if isinstance(exc, REDIS_ERRORS) else CLIENT_CLOSED)
        with anyio.CancelScope(shield=True):
            await lease.release(None)
            if not generation.is_finished:
                with contextlib.suppress(*REDIS_ERRORS):
                    await generation.cancel()
        raise
    return generation, accepted, lease
