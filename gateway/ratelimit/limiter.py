"""Per-key admission: requests per minute, tokens per minute and concurrent requests.

All decisions run as one Lua script in Redis (``admit.lua``), so the limits hold across any number of
gateway replicas. Tokens are reserved up front (an estimate of the prompt plus ``max_tokens``) and
reconciled with the real usage when the request ends (``release.lua``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from shared import keys

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class RateLimits:
    """A key's limits; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {value}")


@dataclass(frozen=True)
class RateLimitState:
    """The outcome of one admission (or a look at the key's buckets), and what to tell the client."""

    limits: RateLimits
    is_allowed: bool
    reason: str  # "" | "requests" | "tokens" | "concurrency" | "too_large"
    remaining_requests: int
    reset_requests_s: float
    remaining_tokens: int
    reset_tokens_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits the key has, and ``Retry-After`` when refused."""
        out: dict[str, str] = {}
        if self.limits.requests_per_minute is not None:
            out["x-ratelimit-limit-requests"] = str(self.limits.requests_per_minute)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = format_duration(self.reset_requests_s)
        if self.limits.tokens_per_minute is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limits.tokens_per_minute)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = format_duration(self.reset_tokens_s)
        if not self.is_allowed and self.retry_after_s > 0:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            out["retry-after-ms"] = str(math.ceil(self.retry_after_s * 1000))
        return out

    def message(self) -> str:
        """Why the request was refused, for the 429 body."""
        if self.reason == "requests":
            return f"Rate limit reached: {self.limits.requests_per_minute} requests per minute."
        if self.reason == "tokens":
            return f"Rate limit reached: {self.limits.tokens_per_minute} tokens per minute."
        if self.reason == "concurrency":
            return f"Too many concurrent requests: at most {self.limits.max_concurrency} at once."
        if self.reason == "too_large":
            return (
                f"Request too large: it may use more than the key's limit of {self.limits.tokens_per_minute} "
                "tokens per minute; lower max_tokens or shorten the prompt."
            )
        return ""


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def estimate_prompt_tokens(text: str) -> int:
    """A cheap upper-leaning guess of a prompt's token count before the worker tokenizes it.

    The reservation is reconciled with the real count when the request ends, so this only needs to be
    in the right range; ~4 characters per token is typical of BPE vocabularies on English text.
    """
    return max(1, math.ceil(len(text) / 4))


class RateLimiter:
    """Admits and releases requests of API keys against their ``RateLimits``."""

    def __init__(self, redis: Redis, lease_s: int = keys.RATELIMIT_LEASE_S) -> None:
        self._admit = redis.register_script((_HERE / "admit.lua").read_text())
        self._release = redis.register_script((_HERE / "release.lua").read_text())
        self._lease_ms = lease_s * 1000

    async def acquire(self, key_id: str, limits: RateLimits, num_tokens: int, req_id: str) -> RateLimitState:
        """Reserve a request, ``num_tokens`` tokens and a concurrency slot; or refuse, reserving nothing."""
        return await self._run(key_id, limits, num_tokens, req_id, peek=False)

    async def peek(self, key_id: str, limits: RateLimits) -> RateLimitState:
        """The key's current levels, for the headers of responses that do not consume the limits."""
        return await self._run(key_id, limits, 0, "", peek=True)

    async def release(
        self, key_id: str, limits: RateLimits, req_id: str, num_reserved: int, num_used: int
    ) -> None:
        """End an admitted request: free its slot and settle its tokens with what it really used."""
        await self._release(
            keys=[keys.ratelimit_key(key_id, "tokens"), keys.ratelimit_key(key_id, "inflight")],
            args=[limits.tokens_per_minute or 0, num_reserved, num_used, req_id],
        )

    async def _run(
        self, key_id: str, limits: RateLimits, num_tokens: int, req_id: str, peek: bool
    ) -> RateLimitState:
        result = await self._admit(
            keys=[
                keys.ratelimit_key(key_id, "requests"),
                keys.ratelimit_key(key_id, "tokens"),
                keys.ratelimit_key(key_id, "inflight"),
            ],
            args=[
                limits.requests_per_minute or 0,
                limits.tokens_per_minute or 0,
                limits.max_concurrency or 0,
                num_tokens,
                req_id,
                self._lease_ms,
                "1" if peek else "0",
            ],
        )
        allowed, reason, req_left, req_reset_ms, tok_left, tok_reset_ms, retry_ms = result
        return RateLimitState(
            limits=limits,
            is_allowed=bool(int(allowed)),
            reason=reason.decode() if isinstance(reason, bytes) else str(reason),
            remaining_requests=int(req_left),
            reset_requests_s=int(req_reset_ms) / 1000,
            remaining_tokens=int(tok_left),
            reset_tokens_s=int(tok_reset_ms) / 1000,
            retry_after_s=int(retry_ms) / 1000,
        )
