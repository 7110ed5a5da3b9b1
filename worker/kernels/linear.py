"""Linear layers on the CPU: the matmul kernel for the number of rows.

- Up to ``SMALL_ROWS`` rows (decode at a small batch), in bf16 on CPUs with AVX512-BF16, the
  ``bf16_linear`` kernel: such a product streams each weight once, and oneDNN's bf16 GEMV read the
  weights at ~6 GB/s of the ~11 one core streams here (SmolLM2's matmuls at one row: 15-16 ms against
  23-26 ms reordered and 41-43 ms with ``F.linear``, one thread, AMD EPYC with AVX512-BF16).
- Otherwise oneDNN with the weight reordered once into its blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``): ``F.linear`` leaves the weight as stored, and was
  1.3-1.6x slower from 4 rows on in bf16 (1.2-2x in float32); in float32 also at 1-3 rows (SmolLM2's
  matmuls: 54/93/112 ms against 46/56/41 ms at 1/2/3 rows, same machine). The reordered copy is made
  on first use (~0.16 s for SmolLM2-135M) and kept on the weight: a second copy of every linear weight.

Off the CPU, or with ``BUSSTOP_CPU_KERNELS=false``, ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kernels import cpu_ops

SMALL_ROWS = 3
_PACKED_DTYPES = (torch.bfloat16, torch.float32)
_PACKED = "_busstop_onednn_packed"  # the attribute that holds (weight version, reordered copy)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [rows, in_features], by the fastest kernel for ``rows``."""
    if x.device.type != "cpu" or x.dim() != 2 or (ops := cpu_ops()) is None:
        return F.linear(x, weight, bias)
    if x.shape[0] <= SMALL_ROWS and x.dtype == torch.bfloat16 and ops.bf16_linear_fits(x, weight):
        out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
        ops.bf16_linear(x, weight, bias, out)
        return out
    packed = _packed(weight)
    if packed is None or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def logits_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` as float32 logits, whatever the model's dtype. bf16 logits lie 0.06-0.125 apart
    at an LM head's magnitudes, close enough for the top two tokens to tie or swap (SmolLM2 in bf16
    then answered "What is the capital of France?" wrong). Up to ``SMALL_ROWS`` rows in bf16 on CPUs
    with AVX512-BF16 the ``bf16_linear`` kernel stores its float sums as they are; elsewhere the product
    runs in the model's dtype and the logits within rounding of each row's maximum, the only ones
    that can decide a greedy pick, are computed again in float."""
    ops = cpu_ops() if x.device.type == "cpu" and x.dim() == 2 else None
    if (ops is not None and x.shape[0] <= SMALL_ROWS and x.dtype == torch.bfloat16
            and ops.bf16_linear_fits(x, weight)):
        out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
        ops.bf16_linear(x, weight, None, out)
        return out
    logits = linear(x, weight)
    if logits.dtype == torch.float32:
        return logits
    if ops is not None and logits.dtype == torch.bfloat16 and ops.bf16_linear_fits(x, weight):
        out = torch.empty(logits.shape, dtype=torch.float32)
        ops.exact_near_max(x, weight, logits, out)  # the same as below, in one pass
        return out
    return exact_near_max(logits.float(), x, weight, torch.finfo(logits.dtype).eps)


def exact_near_max(logits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``logits`` [rows, vocab] (rounded to a dtype with machine epsilon ``eps``, widened) with every
    value that may be its row's true maximum replaced by its float product. A rounded value is off by
    at most half its ulp, ``eps * 2**(e-1)`` for exponent ``e``; the margin is twice the maximum's ulp."""
    top = logits.max(dim=-1, keepdim=True).values
    margin = eps * torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent)
    rows, cols = (logits >= top - margin).nonzero(as_tuple=True)
    logits[rows, cols] = (x[rows].float() * weight[cols].float()).sum(-1)
    return logits


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
