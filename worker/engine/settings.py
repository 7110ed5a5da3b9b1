"""The engine's batch limits and threads, read from the environment (prefix ``BUSSTOP_ENGINE_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_ENGINE_", extra="ignore")

    max_num_seqs: int = Field(default=64, ge=1)
    # Tokens per step, prefill chunks included. A step is a bus stop: a waiting interactive request
    # boards at the next one, so a smaller budget bounds its wait behind a long prefill (on CPU a
    # 2048-token step takes seconds).
    max_num_batched_tokens: int = Field(default=2048, ge=1)
    enable_prefix_caching: bool = True
    attention_backend: Literal["auto", "torch", "flashinfer"] = "auto"
    # torch intra-op threads; 0 leaves torch's default (one per core).
    num_threads: int = Field(default=0, ge=0)


@lru_cache
def get_engine_settings() -> EngineSettings:
    return EngineSettings()
