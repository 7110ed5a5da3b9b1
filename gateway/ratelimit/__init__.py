"""Gateway admission: per-key rate limits and per-class queue caps."""

from gateway.ratelimit.limiter import (
    RateLimiter,
    RateLimits,
    RateLimitState,
    estimate_prompt_tokens,
    format_duration,
)
from gateway.ratelimit.queue_cap import QueueCap, QueueCapSettings, num_queued

__all__ = [
    "QueueCap",
    "QueueCapSettings",
    "RateLimitState",
    "RateLimiter",
    "RateLimits",
    "estimate_prompt_tokens",
    "format_duration",
    "num_queued",
]
