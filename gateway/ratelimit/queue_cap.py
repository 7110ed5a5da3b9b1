"""A cap on work queued per traffic class, so overload becomes a fast 503 rather than unbounded latency.

"Queued" is what the model's workers have not yet taken from the class's request stream: the consumer
group's ``lag``. When Redis cannot tell the lag (entries were deleted or trimmed), it is the stream's
length less the entries workers hold (pending).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import TrafficClass


class QueueCapSettings(BaseSettings):
    """Env: ``BUSSTOP_MAX_QUEUED_INTERACTIVE`` etc.; 0 turns a class's cap off."""

    model_config = SettingsConfigDict(env_prefix="BUSSTOP_")

    max_queued_interactive: int = 256
    max_queued_priority: int = 1024
    max_queued_batch: int = 0  # the batch runner bounds its own window
    queue_retry_after_s: int = 2


@dataclass(frozen=True)
class QueueCap:
    max_queued: dict[TrafficClass, int]
    retry_after_s: int
    partitions: int = 1  # of each request stream (``keys.request_partitions``)

    @classmethod
    def from_settings(cls, settings: QueueCapSettings, partitions: int = 1) -> QueueCap:
        caps = {
            TrafficClass.INTERACTIVE: settings.max_queued_interactive,
            TrafficClass.PRIORITY: settings.max_queued_priority,
            TrafficClass.BATCH: settings.max_queued_batch,
        }
        if any(v < 0 for v in caps.values()) or settings.queue_retry_after_s < 1:
            raise ValueError("queue caps must be >= 0 and queue_retry_after_s >= 1")
        return cls(max_queued=caps, retry_after_s=settings.queue_retry_after_s, partitions=partitions)

    async def is_full(self, redis: Redis, model: str, traffic_class: TrafficClass) -> bool:
        """Whether the class's stream already holds as many unstarted requests as it may."""
        cap = self.max_queued[traffic_class]
        return cap > 0 and await num_queued(redis, model, traffic_class, self.partitions) >= cap


async def num_queued(redis: Redis, model: str, traffic_class: TrafficClass, partitions: int = 1) -> int:
    """Requests of (model, class) that no worker has taken yet, in all partitions."""
    total = 0
    for partition in range(partitions):
        tenants: list[str] = []
        if traffic_class in keys.FAIR_CLASSES:  # and each tenant's stream of the class
            tenants = await redis.hkeys(keys.tenants_key(model, traffic_class, partition))  # type: ignore[misc,assignment]
        for tenant in ["", *tenants]:
            total += await _num_queued(redis, keys.request_stream(model, traffic_class, partition, tenant))
    return total


async def _num_queued(redis: Redis, stream: str) -> int:
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet: nothing queued
        return 0
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) != keys.WORKER_GROUP:
            continue
        if group.get("lag") is not None:
            return int(group["lag"])
        return max(0, int(await redis.xlen(stream)) - int(group["pending"]))
    return int(await redis.xlen(stream))  # no worker group yet: everything is waiting
