"""Paged attention in plain PyTorch, on any device, from the same metadata FlashInfer reads.

Decodes (one query each) are batched: their pages are gathered into a [num_decodes, max_kv] view
(max_kv the longest decode, not rounded up to pages) and attended by one scaled_dot_product_attention
in which each KV head's group of query heads are its queries, with a length mask only when the
decodes' lengths differ. On CPU, in bf16 and fp32, this measured 1.5-2.5x faster per layer than two
batched matmuls with a float32 softmax. Each prefill chunk gathers its own pages and runs
scaled_dot_product_attention (memory-efficient for long chunks) with a bottom-right-aligned causal
mask (query j of a chunk of q_len attends to KV positions <= kv_len - q_len + j), which is
FlashInfer's causal semantics.

On the CPU, decodes go through the fused kernel ``paged_decode_attention`` (``worker.kernels``)
instead, which reads each sequence's pages where they lie: no gather and no mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine.attention.metadata import AttentionMetadata
from worker.kernels import cpu_ops_for


@dataclass(frozen=True)
class _PrefillPlan:
    q_start: int
    q_end: int
    page_ids: torch.Tensor  # [num_pages], int64
    kv_len: int
    mask: torch.Tensor | None  # [q_len, kv_len] bool, True = attend; None = plain causal (q_len == kv_len)


class TorchAttentionBackend:
    def __init__(self) -> None:
        self._metadata: AttentionMetadata | None = None
        self._decode_page_table: torch.Tensor | None = None  # [num_decodes, max_pages], int64
        self._decode_max_kv = 0
        self._decode_kv_lens: torch.Tensor | None = None  # [num_decodes], int64
        # [num_decodes, 1, 1, max_kv], bool, True = attend; None when every decode has max_kv tokens
        self._decode_mask: torch.Tensor | None = None
        self._prefills: list[_PrefillPlan] = []

    def plan(self, metadata: AttentionMetadata) -> None:
        """Derive the gather indices and masks once per step; every layer reuses them. Built from host
        lists (a device sync off the CPU, where this backend is FlashInfer's reference, not the fast path):
        at decode batch sizes a few tiny torch ops cost more than the lists."""
        self._metadata = metadata
        device = metadata.kv_indices.device
        ps = metadata.page_size
        indices = metadata.kv_indices.tolist()
        kv_starts = list(itertools.accumulate((-(-kv // ps) for kv in metadata.kv_lens), initial=0))
        nd = metadata.num_decode_seqs
        self._decode_page_table = self._decode_mask = self._decode_kv_lens = None
        if nd:
            tables = [indices[kv_starts[i]:kv_starts[i + 1]] for i in range(nd)]
            max_pages = max(len(t) for t in tables)
            table_rows = [t + [0] * (max_pages - len(t)) for t in tables]
            self._decode_page_table = torch.tensor(table_rows, dtype=torch.int64, device=device)
            decode_lens = metadata.kv_lens[:nd]
            self._decode_max_kv = max(decode_lens)
            self._decode_kv_lens = torch.tensor(decode_lens, device=device)
            if min(decode_lens) != self._decode_max_kv:
                slots = torch.arange(self._decode_max_kv, device=device)
                self._decode_mask = (slots[None, :] < self._decode_kv_lens[:, None])[:, None, None, :]
        self._prefills = []
        q_start = nd
        for i in range(nd, metadata.num_seqs):
            q_len, kv_len = metadata.q_lens[i], metadata.kv_lens[i]
            mask = None
            if q_len != kv_len:
                rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
                mask = torch.arange(kv_len, device=device)[None, :] <= rows
            page_ids = torch.tensor(indices[kv_starts[i]:kv_starts[i + 1]], dtype=torch.int64, device=device)
            self._prefills.append(_PrefillPlan(q_start, q_start + q_len, page_ids, kv_len, mask))
            q_start += q_len

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        """q [num_tokens, num_heads, head_dim]; k, v [num_tokens, num_kv_heads, head_dim];
        k_cache, v_cache [num_pages, page_size, num_kv_heads, head_dim]
        -> [num_tokens, num_heads, head_dim]."""
        md = self._metadata
        if md is None:
            raise RuntimeError("plan() must run before forward()")
        ops = cpu_ops_for(q)
        if ops is not None:
            ops.write_kv(k, v, k_cache, v_cache, md.slot_mapping)
        else:
            num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
            k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, md.slot_mapping, k)
            v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, md.slot_mapping, v)
        out = torch.empty_like(q)
        nd = md.num_decode_seqs
        table, kv_lens = self._decode_page_table, self._decode_kv_lens
        if table is not None and kv_lens is not None and ops is not None:
            # reads the pages where they lie: no gather, no mask
            ops.paged_decode_attention(q[:nd], k_cache, v_cache, table, kv_lens, q.shape[-1] ** -0.5,
                                       out[:nd])
        elif table is not None:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, table, self._decode_max_kv,
                                    self._decode_mask)
        for p in self._prefills:
            # [num_kv_heads, kv_len, head_dim]
            kp = k_cache.index_select(0, p.page_ids).flatten(0, 1)[: p.kv_len].transpose(0, 1)
            vp = v_cache.index_select(0, p.page_ids).flatten(0, 1)[: p.kv_len].transpose(0, 1)
            qp = q[p.q_start:p.q_end].transpose(0, 1)  # [num_heads, q_len, head_dim]
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, is_causal=p.mask is None,
                                               enable_gqa=True)
            out[p.q_start:p.q_end] = o.transpose(0, 1)
        return out

    @staticmethod
    def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                max_kv: int, mask: torch.Tensor | None) -> torch.Tensor:
        """q [nd, num_heads, head_dim] -> [nd, num_heads, head_dim]; one query per sequence."""
        # [nd, num_kv_heads, max_kv, head_dim]; index_select of whole pages measured ~3x faster
        # than advanced indexing (k_cache[page_table]) on CPU
        nd, pages = page_table.shape
        flat = page_table.flatten()
        kd = k_cache.index_select(0, flat).view(nd, pages * k_cache.shape[1], *k_cache.shape[2:])
        vd = v_cache.index_select(0, flat).view(nd, pages * v_cache.shape[1], *v_cache.shape[2:])
        kd, vd = kd[:, :max_kv].transpose(1, 2), vd[:, :max_kv].transpose(1, 2)
        # The query heads that share a KV head ride as that head's queries: [nd, kv_heads, group, dim]
        # with no causal mask is grouped-query decode, and one SDPA task per KV head (not per query
        # head) measured 1.4-1.7x faster than enable_gqa at batch 16-64.
        num_kv_heads = kd.shape[1]
        o = F.scaled_dot_product_attention(q.unflatten(1, (num_kv_heads, -1)), kd, vd, attn_mask=mask)
        return o.flatten(1, 2)
