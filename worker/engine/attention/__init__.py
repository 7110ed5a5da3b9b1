"""Attention over the paged KV cache: one metadata record per step, read by either backend."""

from __future__ import annotations

import torch

from worker.engine.attention.metadata import AttentionMetadata
from worker.engine.attention.torch_backend import TorchAttentionBackend


def flashinfer_available() -> bool:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


FLASHINFER_DTYPES = (torch.float16, torch.bfloat16)


def resolve_backend_name(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """"auto" is flashinfer on CUDA in fp16/bf16 when importable, torch otherwise; ValueError if an
    explicit choice cannot run."""
    usable = device.type == "cuda" and dtype in FLASHINFER_DTYPES
    if name == "auto":
        return "flashinfer" if usable and flashinfer_available() else "torch"
    if name == "flashinfer" and not (usable and flashinfer_available()):
        raise ValueError("attention_backend 'flashinfer' needs a CUDA device, dtype float16 or bfloat16 and "
                         "the flashinfer package (pip install 'busstop[gpu]')")
    return name


__all__ = ["AttentionMetadata", "TorchAttentionBackend", "flashinfer_available", "resolve_backend_name"]
