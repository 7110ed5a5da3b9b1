"""From a validated OpenAI request to an accepted generation (or the error that stops it)."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import anyio
from fastapi import Request

from gateway.core.auth import Principal
from gateway.core.errors import OpenAIError, shorten
from gateway.core.state import GatewayState
from gateway.protocol.requests import MAX_SEED, MIN_SEED
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


def refuse_too_many_choice_tokens(state: GatewayState, n: int, max_tokens: int) -> None:
    """A 400 for ``n`` choices of ``max_tokens`` over the request's completion-token limit."""
    limit = state.settings.max_request_completion_tokens
    if n > 1 and n * max_tokens > limit:
        raise OpenAIError(
            400,
            f"n={n} choices of max_tokens={max_tokens} ask for {n * max_tokens} completion tokens; "
            f"a request may ask for at most {limit}. Lower n or max_tokens.",
            param="n",
            code="invalid_value",
        )


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice ``index``'s seed: each of ``n`` seeded choices draws its own tokens, reproducibly."""
    if seed is None or index == 0:
        return seed
    return (seed + index - MIN_SEED) % (MAX_SEED - MIN_SEED + 1) + MIN_SEED


async def start_generations(
    state: GatewayState,
    http: Request,
    principal: Principal,
    req_id: str,
    model: str,
    sampling: SamplingOptions,
    priority: int,
    *,
    n: int = 1,
    messages: list[ChatMessage] | None = None,
    tools: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    prompt_token_ids: list[int] | None = None,
) -> tuple[list[Generation], list[ReplyEvent], Lease]:
    """Admit once for all ``n`` choices, queue one request per choice and wait until each is accepted;
    the lease is released here, and the started choices cancelled, if any of that fails."""
    first = GenerateRequest(
        req_id=req_id,
        model=model,
        traffic_class=traffic_class(principal, http.headers.get(TRAFFIC_CLASS_HEADER), priority),
        tenant=principal.tenant,
        tenant_weight=principal.weight,
        messages=messages,
        tools=tools,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids,
        sampling=sampling,
        arrival_time=time.time(),
        traceparent=http.headers.get("traceparent"),
        gateway_id=state.presence.gateway_id if state.presence is not None else None,
    )
    requests = [first] + [
        first.model_copy(update={
            "req_id": f"{req_id}-{i}",
            "sampling": sampling.model_copy(update={"seed": choice_seed(sampling.seed, i)}),
        })
        for i in range(1, n)
    ]
    lease = await state.admission.admit(principal, first, num_choices=n)
    generations = [
        Generation(state.redis, state.workers, state.settings, r, state.presence) for r in requests
    ]
    accepted: list[ReplyEvent] = []
    try:
        for generation in generations:  # XADDs in order; the workers admit the choices side by side
            accepted.append(await generation.start())
    except BaseException as exc:
        status = exc.status if isinstance(exc, OpenAIError) else (
            503 if isinstance(exc, REDIS_ERRORS) else CLIENT_CLOSED)  # Redis failed, or the client left
        for generation in generations:
            generation.telemetry.finish(status)
        with anyio.CancelScope(shield=True):
            await lease.release(None)
            for generation in generations:
                if not generation.is_finished:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await generation.cancel()
        raise
    return generations, accepted, lease
