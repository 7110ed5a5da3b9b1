"""Engine configuration: page and batch limits, KV budget, attention backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.step_shaping import SloTargets

ATTENTION_BACKENDS = ("auto", "torch", "flashinfer")


@dataclass(frozen=True)
class EngineConfig:
    page_size: int = 16
    kv_cache_bytes: int = 256 * 1024 * 1024
    num_pages: int | None = None  # overrides kv_cache_bytes when set
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # "torch" | "flashinfer" | "auto" (flashinfer on CUDA when importable)
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    aging_s: float = 10.0  # a waiting request climbs one priority level per aging_s seconds of waiting
    slo: SloTargets = SloTargets()  # step shaping for the latency-bound classes (step_shaping.py)

    def __post_init__(self) -> None:
        for name in ("page_size", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens",
                     "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_pages is not None and self.num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {self.num_pages}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.aging_s <= 0:
            raise ValueError(f"aging_s must be > 0, got {self.aging_s}")
