"""Linear layers on the CPU, and the LM head's float32 logits.

- In bf16 on CPUs with AVX512-BF16, the ``bf16_panel_linear`` kernel at every row count, on a copy of
  the weight packed once into panels of 16 output columns (``_panels``). SmolLM2's matmuls in a row,
  one thread, AMD EPYC with AVX512-BF16: 14 ms at 1 row (as the row-at-a-time kernel it replaced),
  15/18/28/48/88 ms at 4/8/16/32/64 rows against oneDNN's reordered weights' 22/26/34/54/95.
- Otherwise oneDNN with the weight reordered once into its blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``): ``F.linear`` leaves the weight as stored, and was
  1.3-1.6x slower from 4 rows on in bf16 and 1.2-2x in float32, in float32 also at 1-3 rows (SmolLM2's
  matmuls: 54/93/112 ms against 46/56/41 ms at 1/2/3 rows, same machine).

Either copy is made on first use (~0.16 s for SmolLM2-135M) and kept on the weight: a second copy of
every linear weight. Off the CPU, or with ``BUSSTOP_CPU_KERNELS=false``, ``F.linear``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from worker.kernels import cpu_ops

PANEL = 16  # output columns per panel of a packed bf16 weight
_PACKED_DTYPES = (torch.bfloat16, torch.float32)
_PACKED = "_busstop_onednn_packed"  # the attribute that holds (weight version, reordered copy)
_PANELS = "_busstop_bf16_panels"  # the attribute that holds (weight version, panels)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [rows, in_features], by the fastest kernel for ``rows``."""
    if x.device.type != "cpu" or x.dim() != 2 or (ops := cpu_ops()) is None:
        return F.linear(x, weight, bias)
    panels = _panels(ops, x, weight)
    if panels is not None:
        return _panel_linear(ops, x, panels, weight.shape[0], bias, x.dtype)
    packed = _packed(weight)
    if packed is None or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def logits_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` as float32 logits, whatever the model's dtype. bf16 logits lie 0.06-0.125 apart
    at an LM head's magnitudes, close enough for the top two tokens to tie or swap (SmolLM2 in bf16
    then answered "What is the capital of France?" wrong). The panel kernel stores its float sums as
    they are; elsewhere the product runs in the model's dtype and the logits within rounding of each
    row's maximum, the only ones that can decide a greedy pick, are computed again in float."""
    ops = cpu_ops() if x.device.type == "cpu" and x.dim() == 2 else None
    panels = _panels(ops, x, weight) if ops is not None else None
    if panels is not None:
        return _panel_linear(ops, x, panels, weight.shape[0], None, torch.float32)
    logits = linear(x, weight)
    if logits.dtype == torch.float32:
        return logits
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


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """weight [n, k] (k even) -> [ceil(n / 16), k / 2, 16, 2]: for each panel of 16 output columns, the
    pairs of input features side by side, as VDPBF16PS reads them (rows past n are zeros)."""
    n, k = weight.shape
    padded = torch.zeros(-(-n // PANEL) * PANEL, k, dtype=weight.dtype)
    padded[:n] = weight
    return padded.view(-1, PANEL, k // 2, 2).permute(0, 2, 1, 3).contiguous()


def _panel_linear(ops: Any, x: torch.Tensor, panels: torch.Tensor, n: int, bias: torch.Tensor | None,
                  out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(x.shape[0], n, dtype=out_dtype)
    x = x if x.stride(-1) == 1 else x.contiguous()
    ops.bf16_panel_linear(x, panels, None if bias is None else bias.to(torch.bfloat16), out)
    return out


def _panels(ops: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """The weight's panels where the panel kernel serves (bf16 x and weight, an even number of input
    features, a CPU with AVX512-BF16), made on first use and again after the weight was written in
    place (its version counter moved)."""
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or weight.dim() != 2 or \
            weight.shape[1] % 2 or not _has_bf16_panels(ops):
        return None
    kept = getattr(weight, _PANELS, None)
    if kept is not None and kept[0] == weight._version:
        return kept[1]
    panels = pack_panels(weight.detach())
    setattr(weight, _PANELS, (weight._version, panels))
    return panels


@lru_cache(maxsize=1)
def _has_bf16_panels(ops: Any) -> bool:
    """Asked once, not in every matmul of every step."""
    return bool(ops.has_bf16_panels())


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
