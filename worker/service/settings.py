"""The worker service's settings, read from the environment (prefix ``BUSSTOP_WORKER_``)."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import keys


def default_worker_id() -> str:
    """Unique per process: a restarted worker must not pose as the dead one (its messages get reclaimed)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_WORKER_", extra="ignore", populate_by_name=True)

    # Shared with the gateway, so BUSSTOP_REDIS_URL works for both.
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("BUSSTOP_WORKER_REDIS_URL", "BUSSTOP_REDIS_URL"),
    )
    # The URL is any node of a Redis Cluster; the gateway must say the same.
    redis_cluster: bool = Field(
        default=False, validation_alias=AliasChoices("BUSSTOP_WORKER_REDIS_CLUSTER", "BUSSTOP_REDIS_CLUSTER")
    )
    worker_id: str = Field(default_factory=default_worker_id)
    heartbeat_interval_s: float = keys.HEARTBEAT_INTERVAL_S
    heartbeat_ttl_s: float = keys.HEARTBEAT_TTL_S
    # The heartbeat thread stops beating when the event loop has not ticked for this long, so a hung
    # worker's requests go to live workers.
    loop_stall_s: float = Field(default=30.0, gt=0)
    # How long a finished reply stream stays in Redis: a client may resume (replay) its stream meanwhile.
    reply_keep_s: int = Field(default=keys.REPLY_DONE_TTL_S, ge=1, le=keys.REPLY_TTL_S)
    # A pending message idle this long belongs to a dead worker and is reclaimed.
    reclaim_min_idle_ms: int = keys.RECLAIM_MIN_IDLE_MS
    # A request whose workers died this many times is failed (500) instead of reclaimed again, so
    # one request that crashes workers cannot take them all down in turn.
    max_deliveries: int = 3
    # On SIGTERM: how long running requests may take to finish before they are left for other workers.
    # Keep it below Kubernetes' terminationGracePeriodSeconds.
    grace_period_s: float = 25.0
    # Upper bound on messages taken in one read, whatever the engine's capacity says.
    max_intake_batch: int = 32
    intake_block_ms: int = 1000
    metrics_port: int = 0  # Prometheus /metrics on this port; 0 = off
    # A Redis command that gets no answer for this long fails (and is retried with backoff).
    redis_timeout_s: float = Field(default=5.0, gt=0)
    # How long a reply write rides out a Redis outage before its requests are left for reclaim.
    write_deadline_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.heartbeat_interval_s <= 0:
            raise ValueError("heartbeat_interval_s must be > 0")
        if self.heartbeat_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError("heartbeat_ttl_s must be at least twice heartbeat_interval_s")
        # Held messages are refreshed once per heartbeat; a threshold close to that would steal live work.
        if self.reclaim_min_idle_ms < 3 * self.heartbeat_interval_s * 1000:
            raise ValueError("reclaim_min_idle_ms must be at least 3 heartbeat intervals")
        if self.grace_period_s < 0:
            raise ValueError("grace_period_s must be >= 0")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if self.max_intake_batch < 1:
            raise ValueError("max_intake_batch must be >= 1")
        if self.intake_block_ms < 1:
            raise ValueError("intake_block_ms must be >= 1")
        return self


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
