"""The gateway's admission step with limits: per-class queue caps, then per-key rate limits."""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from gateway.core.auth import Limits, Principal
from gateway.core.errors import OpenAIError
from gateway.ratelimit.headers import set_ratelimit_headers
from gateway.ratelimit.limiter import RateLimiter, RateLimits, estimate_prompt_tokens
from gateway.ratelimit.queue_cap import QueueCap
from gateway.telemetry.metrics import get_gateway_metrics
from gateway.transport.presence import GatewayPresence
from shared import keys
from shared.messages import GenerateRequest, Usage
from shared.retry import REDIS_ERRORS, RetryPolicy

logger = logging.getLogger(__name__)

# Releasing is idempotent (keyed by req_id), so it is retried, but briefly: a response waits on it.
RELEASE_RETRY = RetryPolicy(deadline_s=2.0)


def rate_limits(limits: Limits) -> RateLimits:
    return RateLimits(limits.rpm, limits.tpm, limits.max_concurrency)


def prompt_tokens_estimate(request: GenerateRequest) -> int:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    if request.messages is not None:
        # A few tokens of chat template per message besides its text.
        return sum(estimate_prompt_tokens(m.content) + 4 for m in request.messages)
    return estimate_prompt_tokens(request.prompt or "")


class RateLimitLease:
    """An admitted request's hold on its key's limits, settled with the real usage once it ends."""

    def __init__(
        self, limiter: RateLimiter, principal: Principal, request: GenerateRequest, num_reserved: int
    ) -> None:
        self._limiter = limiter
        self._principal = principal
        self._req_id = request.req_id
        self._num_reserved = num_reserved
        self._num_prompt_estimate = prompt_tokens_estimate(request)
        self._is_released = False

    @property
    def slot(self) -> tuple[str, str] | None:
        """The concurrency slot this lease holds, while it holds one: (in-flight set, req_id)."""
        if self._is_released or not self._principal.limits.max_concurrency:
            return None
        return keys.ratelimit_key(self._principal.key_id, "inflight"), self._req_id

    async def release(self, usage: Usage | None) -> None:
        """``usage`` None (failed or abandoned): the prompt estimate is charged, the completion refunded."""
        if self._is_released:
            return
        self._is_released = True
        used = (
            usage.prompt_tokens + usage.completion_tokens if usage is not None else self._num_prompt_estimate
        )
        limits = rate_limits(self._principal.limits)
        try:
            await RELEASE_RETRY.run(
                lambda: self._limiter.release(
                    self._principal.key_id, limits, self._req_id, self._num_reserved, used
                ),
                "rate-limit release",
            )
        except REDIS_ERRORS as exc:  # the slot's lease expires by itself; the response must still end cleanly
            logger.warning("could not release the rate-limit lease of %s: %s", self._req_id, exc)


class RateLimitAdmission:
    """Refuses with 503 when the request's class already has too much queued, and with 429 when the key
    is over its requests, tokens or concurrency; every answer carries the key's ``x-ratelimit-*`` headers."""

    def __init__(self, redis: Redis, queue_cap: QueueCap, presence: GatewayPresence | None = None) -> None:
        self._limiter = RateLimiter(redis)
        self._queue_cap = queue_cap
        self._redis = redis
        self._presence = presence  # renews the slots' short leases while their requests run

    async def admit(
        self, principal: Principal, request: GenerateRequest, num_choices: int = 1
    ) -> RateLimitLease:
        if await self._queue_cap.is_full(self._redis, request.model, request.traffic_class):
            get_gateway_metrics().count_rate_limited(request.model, request.traffic_class.value, "queue")
            retry = str(self._queue_cap.retry_after_s)
            raise OpenAIError(
                503,
                f"too many {request.traffic_class.value} requests queued for {request.model}; retry later",
                code="queue_full",
                headers={"retry-after": retry},
            )
        limits = rate_limits(principal.limits)
        cost = prompt_tokens_estimate(request) + num_choices * request.sampling.max_tokens
        state = await self._limiter.acquire(principal.key_id, limits, cost, request.req_id)
        headers = state.headers()
        set_ratelimit_headers(headers)
        if not state.is_allowed:
            get_gateway_metrics().count_rate_limited(request.model, request.traffic_class.value, state.reason)
            code = "rate_limit_exceeded" if state.reason != "too_large" else "request_too_large"
            raise OpenAIError(429, state.message(), code=code, headers=headers)
        lease = RateLimitLease(self._limiter, principal, request, cost)
        if self._presence is not None and lease.slot is not None:
            self._presence.hold(lease)
        return lease
