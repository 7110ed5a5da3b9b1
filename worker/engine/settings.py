"""The engine's batch limits and threads, read from the environment (prefix ``BUSSTOP_ENGINE_``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.engine.cpu_cores import parse_cores
from worker.engine.step_shaping import SloTargets


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_ENGINE_", extra="ignore")

    max_num_seqs: int = Field(default=64, ge=1)
    # Tokens per step, prefill chunks included. A step is a bus stop: a waiting interactive request
    # boards at the next one, so a smaller budget bounds its wait behind a long prefill (on CPU a
    # 2048-token step takes seconds).
    max_num_batched_tokens: int = Field(default=2048, ge=1)
    enable_prefix_caching: bool = True
    attention_backend: Literal["auto", "torch", "flashinfer"] = "auto"
    # torch intra-op threads; 0: one per core of cpu_cores, else torch's default (one per core).
    num_threads: int = Field(default=0, ge=0)
    # Cores the step thread runs on ('1', '2-7'); the worker's other threads keep the rest of its cores.
    # '' pins nothing. `busstop up` fills it in on a CPU (worker/engine/cpu_cores.py says why).
    cpu_cores: str = ""
    # How soon a thread waiting for the GIL forces the holder to let go (Python's default is 5 ms). The
    # step thread needs the GIL back after every op, and the worker's I/O threads hold it for their
    # detokenizing and Redis writes: at 0.5 ms the stack measured 11-25% more output tok/s at
    # concurrency 16 than at 5 ms (CPU, bf16).
    gil_switch_interval_ms: float = Field(default=0.5, gt=0)
    # SLO step shaping (step_shaping.py): while a latency-bound class has work, each step holds lower
    # classes back to stay within its targets. A target of 0 is derived: slo_slowdown times the
    # measured cost of the class's own work alone in the step.
    slo_shaping: bool = True
    slo_slowdown: float = Field(default=1.4, ge=1)
    slo_quiet_s: float = Field(default=2.0, ge=0)  # the cap outlives the class's last sequence this long
    interactive_tpot_ms: float = Field(default=0, ge=0)
    interactive_ttft_ms: float = Field(default=0, ge=0)  # a step that carries an interactive prompt
    priority_tpot_ms: float = Field(default=0, ge=0)
    priority_ttft_ms: float = Field(default=0, ge=0)

    @field_validator("cpu_cores")
    @classmethod
    def _cores(cls, value: str) -> str:
        parse_cores(value)  # ValueError: a clear message at start
        return value

    @property
    def engine_cores(self) -> frozenset[int]:
        return parse_cores(self.cpu_cores)

    @property
    def slo(self) -> SloTargets:
        return SloTargets(
            tpot_s=(self.interactive_tpot_ms / 1000, self.priority_tpot_ms / 1000),
            ttft_s=(self.interactive_ttft_ms / 1000, self.priority_ttft_ms / 1000),
            slowdown=self.slo_slowdown,
            quiet_s=self.slo_quiet_s,
            is_enabled=self.slo_shaping,
        )


@lru_cache
def get_engine_settings() -> EngineSettings:
    return EngineSettings()
