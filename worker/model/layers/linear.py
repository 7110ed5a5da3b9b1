"""Column- and row-parallel linear layers: their parameters and how a checkpoint fills them.

``worker.model.llama.decoder_layer`` multiplies by them (``worker.kernels.linear``). Every weight has
its own ``weight_loader(param, full_tensor[, shard_id])`` that takes the FULL checkpoint tensor and
copies in this rank's shard, so a loader never needs to know the sharding.
Column-parallel layers split output features (no communication); row-parallel layers split input
features and all-reduce their output; that all-reduce is the only collective in a linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.model.parallel import SINGLE, ParallelContext


def _copy_checked(param: torch.Tensor, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"weight shape {tuple(loaded.shape)} does not match parameter {tuple(param.shape)}")
    with torch.no_grad():  # in place through the parameter, so its version counter moves
        param.copy_(loaded)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """An unsharded parameter (norm weights): the checkpoint tensor as is."""
    _copy_checked(param, loaded)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W split by output rows: rank r holds rows [r*n, (r+1)*n)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 parallel: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.parallel = parallel
        self.out_features_per_rank = parallel.shard_size(out_features, "output features")
        self.weight = nn.Parameter(torch.empty(self.out_features_per_rank, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(self.out_features_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.bias = None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        n = param.shape[0]
        _copy_checked(param, loaded.narrow(0, self.parallel.rank * n, n))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one matmul (gate_up: gate then up).

    Each rank's weight is [shard of part 0; shard of part 1; ...], so a rank's output splits into the
    parts locally.
    """

    def __init__(self, in_features: int, part_sizes: list[int], bias: bool = False,
                 parallel: ParallelContext = SINGLE) -> None:
        super().__init__(in_features, sum(part_sizes), bias, parallel)
        self.part_sizes_per_rank = [parallel.shard_size(s, "merged part size") for s in part_sizes]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str = 0) -> None:
        index = int(shard_id)
        n = self.part_sizes_per_rank[index]
        offset = sum(self.part_sizes_per_rank[:index])
        _copy_checked(param.narrow(0, offset, n), loaded.narrow(0, self.parallel.rank * n, n))


class QKVParallelLinear(MergedColumnParallelLinear):
    """q, k and v projections in one matmul; shard ids "q", "k", "v".

    Query heads are split across ranks. KV heads are split too when there are at least as many as
    ranks; otherwise each rank keeps the one KV head its query heads read (replicated KV heads).
    """

    SHARD_IDS = ("q", "k", "v")

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, parallel: ParallelContext = SINGLE) -> None:
        self.head_dim = head_dim
        self.num_heads_per_rank = parallel.shard_size(num_heads, "num_attention_heads")
        self.num_kv_heads_per_rank = parallel.num_kv_heads_per_rank(num_kv_heads)
        self.kv_head_start = parallel.kv_head_start(num_kv_heads)
        kv_size = parallel.world_size * self.num_kv_heads_per_rank * head_dim  # replicas counted
        super().__init__(hidden_size, [num_heads * head_dim, kv_size, kv_size], bias, parallel)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str = 0) -> None:
        index = self.SHARD_IDS.index(shard_id) if isinstance(shard_id, str) else shard_id
        if index == 0:
            super().weight_loader(param, loaded, index)
            return
        n = self.part_sizes_per_rank[index]
        offset = sum(self.part_sizes_per_rank[:index])
        start = self.kv_head_start * self.head_dim
        _copy_checked(param.narrow(0, offset, n), loaded.narrow(0, start, n))


class RowParallelLinear(nn.Module):
    """y = x W^T with W split by input columns; the partial sums are all-reduced (no bias: no Llama-family
    model has one here)."""

    def __init__(self, in_features: int, out_features: int, parallel: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.parallel = parallel
        self.in_features_per_rank = parallel.shard_size(in_features, "input features")
        self.weight = nn.Parameter(torch.empty(out_features, self.in_features_per_rank), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        n = self.in_features_per_rank
        _copy_checked(param, loaded.narrow(1, self.parallel.rank * n, n))
