"""Where a tensor-parallel layer meets its process group.

Layers never call torch.distributed directly; they ask the ParallelContext they were built with.
With world_size 1 (the default, SINGLE) every collective is the identity, so the same model code runs
unsharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    group: Any = None  # torch.distributed.ProcessGroup when world_size > 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid rank {self.rank} for world_size {self.world_size}")

    def shard_size(self, total: int, what: str) -> int:
        """This rank's part of a dimension that must split evenly."""
        if total % self.world_size:
            raise ValueError(
                f"{what} ({total}) is not divisible by the tensor-parallel size {self.world_size}")
        return total // self.world_size

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
