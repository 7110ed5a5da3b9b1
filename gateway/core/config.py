"""The gateway's settings, read from ``BUSSTOP_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # The URL is any node of a Redis Cluster (keys carry hash tags; request streams are partitioned).
    redis_cluster: bool = False
    # Seconds to wait for Redis to accept a connection or answer a command before answering 503.
    redis_timeout_s: float = Field(default=2.0, gt=0)
    # Connections to Redis one gateway may open (redis-py's own default is 100). On one Redis all reply
    # streams share one blocking read; on a cluster every streaming request holds one, so there this
    # bounds the streams a replica serves at once.
    redis_max_connections: int = Field(default=4096, ge=16)
    # How long a running request's reads ride out a Redis outage (retried with backoff) before the
    # client gets a 503 error; longer than a failover or a `DEBUG SLEEP 30`.
    redis_retry_s: float = Field(default=45.0, ge=0)
    # This replica's name in Redis (its liveness key and the requests it serves); unique per process,
    # so a restarted gateway is a new one and the dead one's requests are aborted.
    gateway_id: str = Field(default_factory=lambda: default_gateway_id(), min_length=1)

    # API keys: a YAML or JSON file of sha256 hashes (see gateway/core/auth.py). Without one, a single
    # development key from BUSSTOP_DEV_API_KEY is accepted (tenant "dev", public traffic).
    keys_file: Path | None = None
    dev_api_key: SecretStr | None = None

    # Bodies of the JSON routes above this are refused with 413 while they arrive (the Files API has
    # its own limit, BUSSTOP_BATCH_MAX_FILE_BYTES).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Served model names that exist even while none of their workers is up: a request for one of
    # them waits for a worker (then 503) instead of answering 404. /ready requires a live worker for
    # each; when empty, /ready requires at least one live worker of any model.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # comma-separated in the env

    # How long a request for a known model waits for a live worker before answering 503.
    worker_wait_s: float = Field(default=5.0, ge=0)
    # How long a submitted request may stay unaccepted (queued behind others) before 503.
    queue_timeout_s: float = Field(default=600.0, gt=0)
    # After acceptance: the longest silence on a reply stream before the request fails with 504.
    # Longer than a worker's reclaim delay, so a request resumed by another worker is waited for.
    reply_idle_timeout_s: float = Field(default=120.0, gt=0)
    # One blocking XREAD waits at most this long; between reads the gateway checks worker liveness
    # and client disconnects.
    read_block_ms: int = Field(default=1000, ge=10)
    # A stream whose client hung up keeps running this long, so the client can resume it (on any replica,
    # with Last-Event-ID); then it is cancelled unless it was resumed. 0 cancels at once.
    resume_grace_s: float = Field(default=2.0, ge=0)
    # How often the cached set of live workers is refreshed from their heartbeat keys.
    worker_refresh_s: float = Field(default=1.0, gt=0)

    # max_tokens when a legacy completion request has none (OpenAI's default). Chat requests without
    # one run to the end of the context window, as OpenAI and vLLM do.
    default_completion_max_tokens: int = Field(default=16, ge=1)
    # A request with n choices may ask for at most this many completion tokens in all (n x max_tokens).
    max_request_completion_tokens: int = Field(default=65536, ge=1)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}"
            )
        if self.keys_file is not None and not self.keys_file.is_file():
            raise ValueError(f"keys_file {self.keys_file} does not exist")
        return self


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()
