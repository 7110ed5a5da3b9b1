"""Linear layers on the CPU: the matmul kernel for the number of rows.

- Up to ``SMALL_ROWS`` rows (decode at a small batch), in bf16 on CPUs with AVX512-BF16, the
  ``small_linear`` kernel: such a product streams each weight once, and oneDNN's bf16 GEMV read the
  weights at ~6 GB/s of the ~11 one core streams here. Elsewhere at that size, ``F.linear``.
- From ``PACKED_MIN_ROWS`` rows on, oneDNN with the weight reordered once into its blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``): ``F.linear`` leaves the weight as stored, and was
  1.3-1.6x slower from 4 rows on in bf16 (1.2-2x in float32). The reordered copy is made on first
  use (~0.16 s for SmolLM2-135M) and kept on the weight: a second copy of every linear weight.

Off the CPU, or with ``BUSSTOP_CPU_KERNELS=false``, ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kernels import cpu_ops

SMALL_ROWS = 3
PACKED_MIN_ROWS = SMALL_ROWS + 1
_PACKED_DTYPES = (torch.bfloat16, torch.float32)
_PACKED = "_busstop_onednn_packed"  # the attribute that holds (weight version, reordered copy)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [rows, in_features], by the fastest kernel for ``rows``."""
    if x.device.type != "cpu" or x.dim() != 2 or (ops := cpu_ops()) is None:
        return F.linear(x, weight, bias)
    if x.shape[0] <= SMALL_ROWS:
        if x.dtype == torch.bfloat16 and ops.small_linear_fits(x, weight):
            out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
            ops.small_linear(x, weight, bias, out)
            return out
        return F.linear(x, weight, bias)
    packed = _packed(weight)
    if packed is None or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def _packed(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight's oneDNN-reordered copy, made on first use and again after the weight was written
    in place (its version counter moved); None where oneDNN cannot take it (its bf16 path needs
    AVX-512 or AVX-NE-CONVERT: on an AVX2-only CPU it refuses, and ``F.linear`` runs instead)."""
    kept = getattr(weight, _PACKED, None)
    if kept is not None and kept[0] == weight._version:
        return kept[1]
    if weight.dtype not in _PACKED_DTYPES or weight.dim() != 2 or not torch.backends.mkldnn.is_available():
        return None
    packed: torch.Tensor | None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
    except RuntimeError:
        packed = None
    setattr(weight, _PACKED, (weight._version, packed))
    return packed
