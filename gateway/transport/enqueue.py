"""Putting a request on its request stream: the one place that writes a request message.

Interactive requests go to their class's one stream. Internal requests (priority, batch) go to their
tenant's stream of the class, carry their expected cost, and (re)register the tenant with its weight
in the same script, so workers find the stream even after Redis lost the registry.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys
from shared.messages import COST_FIELD, DATA_FIELD, GenerateRequest
from shared.redis_client import LuaScript

# KEYS[1]: the tenant's request stream, KEYS[2]: the class's tenants hash.
# ARGV: the request JSON, its cost, the tenant, its weight. Returns the message id.
_ENQUEUE = LuaScript(
    f"redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])\n"
    f"return redis.call('XADD', KEYS[1], '*', '{DATA_FIELD}', ARGV[1], '{COST_FIELD}', ARGV[2])\n"
)

BYTES_PER_TOKEN = 4  # a BPE tokenizer's usual rate on English text: close enough for a first charge


def estimated_tokens(request: GenerateRequest) -> int:
    """Prompt and completion tokens the request may take; the worker settles the exact count later."""
    if request.prompt_token_ids is not None:
        prompt = len(request.prompt_token_ids)
    else:
        text = request.prompt or "".join(m.content for m in request.messages or [])
        prompt = -(-len(text.encode()) // BYTES_PER_TOKEN)
    return max(1, prompt) + request.sampling.max_tokens


def request_stream(request: GenerateRequest, partition: int) -> str:
    return keys.request_stream(request.model, request.traffic_class, partition, request.tenant)


async def enqueue(redis: Redis, request: GenerateRequest, partition: int) -> str:
    """XADD the request to its stream; returns the message id."""
    stream = request_stream(request, partition)
    data = request.model_dump_json()
    if request.traffic_class not in keys.FAIR_CLASSES or not request.tenant:
        return str(await redis.xadd(stream, {DATA_FIELD: data}))
    tenants = keys.tenants_key(request.model, request.traffic_class, partition)
    args = [data, estimated_tokens(request), request.tenant, repr(request.tenant_weight)]
    return str(await _ENQUEUE(redis, [stream, tenants], args))
