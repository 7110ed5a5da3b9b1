"""The contract both attention backends meet: plan once per step, then forward once per layer."""

from __future__ import annotations

from typing import Protocol

import torch

from worker.engine.attention.metadata import AttentionMetadata


class BaseAttentionBackend(Protocol):
    def plan(self, metadata: AttentionMetadata) -> None:
        """Prepare for a step's batch; the backend is then the attention every layer of the model calls."""
        ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        """Write k/v at the step's slots, then attend (see worker.model.attention.PagedAttention)."""
        ...
