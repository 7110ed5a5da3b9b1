"""The per-step attention metadata, in FlashInfer's paged-KV format.

Sequences are ordered decodes first (one query token each), then prefill chunks. For sequence i,
its query tokens are rows qo_indptr[i]:qo_indptr[i+1] of the flat batch and its KV pages are
kv_indices[kv_indptr[i]:kv_indptr[i+1]], the last one holding kv_last_page_len[i] tokens. The KV
length includes this step's tokens, which the backend first writes at slot_mapping
(page * page_size + offset), and the
model reads the tokens' positions from here too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    qo_indptr: torch.Tensor  # [num_seqs + 1], int32
    kv_indptr: torch.Tensor  # [num_seqs + 1], int32
    kv_indices: torch.Tensor  # [num_kv_pages], int32
    kv_last_page_len: torch.Tensor  # [num_seqs], int32
    slot_mapping: torch.Tensor  # [num_tokens], int64
    positions: torch.Tensor  # [num_tokens], int64: each new token's position in its sequence
    num_decode_seqs: int  # the first num_decode_seqs sequences have exactly one query token
    page_size: int
    q_lens: tuple[int, ...]  # host copies, so planning needs no device sync
    kv_lens: tuple[int, ...]

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @classmethod
    def build(cls, q_lens: list[int], kv_lens: list[int], page_tables: list[list[int]], page_size: int,
              device: torch.device) -> AttentionMetadata:
        """Build from per-sequence query lengths, KV lengths (incl. new tokens) and page tables.

        Sequences with q_len 1 must come first.
        """
        num_decode_seqs = 0
        while num_decode_seqs < len(q_lens) and q_lens[num_decode_seqs] == 1:
            num_decode_seqs += 1
        if any(q == 1 for q in q_lens[num_decode_seqs:]):
            raise ValueError("sequences with one query token must come first")
        # Host lists, then one tensor each: a handful of tiny torch ops cost more than the whole loop
        # at decode batch sizes (0.34 ms against ~0.03 ms at batch 1).
        num_pages = [-(-kv // page_size) for kv in kv_lens]
        kv_indices: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for table, q_len, kv_len, n in zip(page_tables, q_lens, kv_lens, num_pages, strict=True):
            kv_indices.extend(table[:n])
            for pos in range(kv_len - q_len, kv_len):  # this step's tokens
                positions.append(pos)
                slots.append(table[pos // page_size] * page_size + pos % page_size)
        last_page_len = [kv - (n - 1) * page_size for kv, n in zip(kv_lens, num_pages, strict=True)]

        def tensor(values: list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        return cls(
            qo_indptr=tensor([0, *itertools.accumulate(q_lens)], torch.int32),
            kv_indptr=tensor([0, *itertools.accumulate(num_pages)], torch.int32),
            kv_indices=tensor(kv_indices, torch.int32),
            kv_last_page_len=tensor(last_page_len, torch.int32),
            slot_mapping=tensor(slots, torch.int64),
            positions=tensor(positions, torch.int64),
            num_decode_seqs=num_decode_seqs,
            page_size=page_size,
            q_lens=tuple(q_lens),
            kv_lens=tuple(kv_lens),
        )

