"""Where a tensor-parallel layer meets its process group.

Layers never call torch.distributed directly; they ask the ParallelContext they were built with.
With world_size 1 (the default, SINGLE) every collective is the identity, so the same model code runs
unsharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class StepSender(Protocol):
    """Rank 0's side of a TP group's step channel (worker/parallel/step_channel.py)."""

    def send(self, input_ids: torch.Tensor, metadata: Any, logits_rows: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    group: Any = None  # torch.distributed.ProcessGroup when world_size > 1
    step_sender: StepSender | None = None  # rank 0 of a TP group: hands each step to the other ranks

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid rank {self.rank} for world_size {self.world_size}")

    def shard_size(self, total: int, what: str) -> int:
        """This rank's part of a dimension that must split evenly."""
        if total % self.world_size:
            raise ValueError(
                f"{what} ({total}) is not divisible by the tensor-parallel size {self.world_size}")
        return total // self.world_size

    def num_kv_heads_per_rank(self, num_kv_heads: int) -> int:
        """KV heads split over ranks; with fewer KV heads than ranks each rank keeps one (replicated)."""
        if num_kv_heads >= self.world_size:
            return self.shard_size(num_kv_heads, "num_key_value_heads")
        if self.world_size % num_kv_heads:
            raise ValueError(f"num_key_value_heads ({num_kv_heads}) cannot be replicated evenly over "
                             f"the tensor-parallel size {self.world_size}")
        return 1

    def kv_head_start(self, num_kv_heads: int) -> int:
        """The first KV head this rank holds: the one its query heads read (GQA groups stay together)."""
        return self.rank * num_kv_heads // self.world_size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.world_size == 1:
            return x
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every rank's x along dim, in rank order."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)


SINGLE = ParallelContext()
