"""The paged KV pool: per layer, K and V in FlashInfer's NHD layout, sized from a byte budget."""

from __future__ import annotations

import torch

from worker.model.attention import KVCacheLayer


def page_bytes(num_layers: int, page_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes one page takes across all layers, K and V."""
    return 2 * num_layers * page_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.num_pages = num_pages
        self.page_size = page_size
        # Each [num_pages, page_size, num_kv_heads, head_dim]; zeros so unwritten slots are finite.
        self.layers: list[KVCacheLayer] = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]

    def __getitem__(self, layer: int) -> KVCacheLayer:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)
