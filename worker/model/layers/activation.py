"""SwiGLU's gate: silu(gate) * up over the merged gate_up projection's output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kernels import cpu_ops_for


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [num_tokens, 2 * intermediate] (gate then up) -> [num_tokens, intermediate].

    One fused pass on the CPU; elsewhere, or without the kernels, two PyTorch ops.
    """
    ops = cpu_ops_for(x)
    if ops is not None and x.dim() == 2:
        out = x.new_empty(x.shape[0], x.shape[1] // 2)
        ops.silu_and_mul(x, out)
        return out
    return silu_and_mul_torch(x)


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
