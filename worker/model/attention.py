"""What a decoder layer needs from the attention backend; the engine provides the implementation."""

from __future__ import annotations

from typing import Protocol

import torch

# (k, v), each [num_pages, page_size, num_kv_heads, head_dim]
KVCacheLayer = tuple[torch.Tensor, torch.Tensor]


class PagedAttention(Protocol):
    """Attention over a paged KV cache, already planned for one step's batch (the step's metadata).

    ``forward`` writes this step's k/v into the layer's pages at the step's slots, then attends each
    query to its sequence's cached keys with a bottom-right-aligned causal mask.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        """q [num_tokens, num_heads, head_dim], k/v [num_tokens, num_kv_heads, head_dim] -> like q."""
        ...
