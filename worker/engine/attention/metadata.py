"""The per-step attention metadata, in FlashInfer's paged-KV format.

Sequences are ordered decodes first (one query token each), then prefill chunks. For sequence i,
its query tokens are rows qo_indptr[i]:qo_indptr[i+1] of the flat batch and its KV pages are
kv_indices[kv_indptr[i]:kv_indptr[i+1]], the last one holding kv_last_page_len[i] tokens. The KV
length includes this step's tokens, which the backend first writes at slot_mapping
(page * page_size + offset), and the
model reads the tokens' positions from here too.
"""

from __future__ import annotations

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
        num_pages = [-(-kv // page_size) for kv in kv_lens]
        kv_indices: list[int] = []
        for table, n in zip(page_tables, num_pages, strict=True):
            kv_indices.extend(table[:n])
        q = torch.tensor(q_lens, dtype=torch.int32)
        kv = torch.tensor(kv_lens, dtype=torch.int32)
        pages = torch.tensor(num_pages, dtype=torch.int32)
        qo_indptr = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
        kv_indptr = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
        torch.cumsum(q, 0, out=qo_indptr[1:])
        torch.cumsum(pages, 0, out=kv_indptr[1:])
        last_page_len = kv - (pages - 1) * page_size
        # Slots of the new tokens: positions kv_len - q_len .. kv_len - 1 of each sequence.
        seq_of_token = torch.repeat_interleave(torch.arange(len(q_lens)), q.long())
        start_of_token = (kv - q).long() - qo_indptr[:-1].long()
        pos = torch.arange(int(qo_indptr[-1])) + start_of_token[seq_of_token]
        indices = torch.tensor(kv_indices, dtype=torch.int64)
        page = indices[kv_indptr[:-1].long()[seq_of_token] + pos // page_size]
        slot_mapping = page * page_size + pos % page_size
        return cls(
            qo_indptr=qo_indptr.to(device, non_blocking=True),
            kv_indptr=kv_indptr.to(device, non_blocking=True),
            kv_indices=indices.to(torch.int32).to(device, non_blocking=True),
            kv_last_page_len=last_page_len.to(device, non_blocking=True),
            slot_mapping=slot_mapping.to(device, non_blocking=True),
            positions=pos.to(device, non_blocking=True),
            num_decode_seqs=num_decode_seqs,
            page_size=page_size,
            q_lens=tuple(q_lens),
            kv_lens=tuple(kv_lens),
        )

