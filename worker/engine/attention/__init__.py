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


def resolve_backend_name(name: str, device: torch.device) -> str:
    """"auto" is flashinfer on CUDA when importable, torch otherwise; ValueError if unusable."""
    if name == "auto":
        return "flashinfer" if device.type == "cuda" and flashinfer_available() else "torch"
    if name == "flashinfer" and (device.type != "cuda" or not flashinfer_available()):
        raise ValueError("attention_backend 'flashinfer' needs a CUDA device and the flashinfer package "
                         "(pip install 'busstop[gpu]')")
    return name


__all__ = ["AttentionMetadata", "TorchAttentionBackend", "flashinfer_available", "resolve_backend_name"]
