"""RMSNorm, with the residual add fused in so each decoder layer makes one pass over the hidden state.

On the CPU it runs as one fused kernel (``worker.kernels``); elsewhere, or without the kernels, as
PyTorch ops that compute the same values.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.kernels import cpu_ops_for
from worker.model.layers.linear import default_weight_loader


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.weight.weight_loader = default_weight_loader  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (normed, new_residual) where new_residual = x + residual."""
        return rms_norm(x, residual, self.weight, self.eps)


def rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, x + residual); ``residual`` None is the first layer's norm, with nothing to add."""
    ops = cpu_ops_for(x)
    if ops is not None and x.dim() == 2 and weight.dtype == x.dtype:
        out = torch.empty_like(x)
        if residual is None:
            ops.rms_norm(x, weight, eps, out)
            return out, x
        total = torch.empty_like(x)
        ops.add_rms_norm(x, residual, weight, eps, out, total)
        return out, total
    return rms_norm_torch(x, residual, weight, eps)


def rms_norm_torch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    residual = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype), residual
