"""Paged attention with FlashInfer (CUDA only; the optional `gpu` extra, imported lazily).

The step's sequences arrive decodes first: the decode wrapper serves those (one query each), the
prefill wrapper the prompt chunks with FlashInfer's causal mask, which is bottom-right aligned like
the torch backend's. Both are planned once per step from host-side indptrs and last-page lengths
(no device sync) and run once per layer. New K/V are written with the same slot mapping the torch
backend uses.
"""

from __future__ import annotations

import itertools

import torch

from worker.engine.attention.metadata import AttentionMetadata

WORKSPACE_BYTES = 128 * 1024 * 1024


class FlashInferAttentionBackend:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        import flashinfer

        self.dtype = dtype
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        # Separate workspaces: both wrappers hold a plan for the same step.
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device), kv_layout="NHD",
            use_tensor_cores=True)  # tensor-core decode handles any GQA group size (SmolLM2: 3)
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device), kv_layout="NHD")
        self._metadata: AttentionMetadata | None = None

    def plan(self, metadata: AttentionMetadata) -> None:
        self._metadata = metadata
        nd, ps = metadata.num_decode_seqs, metadata.page_size
        num_pages = [-(-kv // ps) for kv in metadata.kv_lens]
        kv_indptr = [0, *itertools.accumulate(num_pages)]
        qo_indptr = [0, *itertools.accumulate(metadata.q_lens)]
        last_page_len = torch.tensor(
            [kv - (n - 1) * ps for kv, n in zip(metadata.kv_lens, num_pages, strict=True)], dtype=torch.int32)
        common = dict(num_qo_heads=self.num_heads, num_kv_heads=self.num_kv_heads, page_size=ps,
                      q_data_type=self.dtype, kv_data_type=self.dtype)
        if nd:
            self._decode.plan(
                indptr=torch.tensor(kv_indptr[: nd + 1], dtype=torch.int32),
                indices=metadata.kv_indices[: kv_indptr[nd]],
                last_page_len=last_page_len[:nd],
                head_dim=self.head_dim,
                **common,
            )
        if nd < metadata.num_seqs:
            self._prefill.plan(
                qo_indptr=torch.tensor([q - qo_indptr[nd] for q in qo_indptr[nd:]], dtype=torch.int32),
                paged_kv_indptr=torch.tensor([k - kv_indptr[nd] for k in kv_indptr[nd:]], dtype=torch.int32),
                paged_kv_indices=metadata.kv_indices[kv_indptr[nd]:],
                paged_kv_last_page_len=last_page_len[nd:],
                head_dim_qk=self.head_dim,
                causal=True,
                **common,
            )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        """Same contract as TorchAttentionBackend.forward."""
        md = self._metadata
        if md is None:
            raise RuntimeError("plan() must run before forward()")
        k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, md.slot_mapping, k)
        v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, md.slot_mapping, v)
        nd = md.num_decode_seqs
        parts = []
        if nd:
            parts.append(self._decode.run(q[:nd], (k_cache, v_cache)))  # [nd, num_heads, head_dim]
        if nd < md.num_seqs:
            parts.append(self._prefill.run(q[nd:], (k_cache, v_cache)))  # [num_prefill_tokens, ...]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
