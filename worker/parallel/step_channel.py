"""Rank 0 hands each step's model inputs to the other ranks of its group: two broadcasts, no pickle.

Only rank 0 schedules and samples; the other ranks run the same forward pass on the same inputs
(their share of every layer) and take part in its collectives. A step travels as

- a header, int64 [HEADER_LEN]: command, num_tokens, num_seqs, num_kv_pages, num_logits_rows,
  num_decode_seqs, page_size;
- one flat int64 payload: input_ids, positions, slot_mapping [num_tokens] each, qo_indptr and
  kv_indptr [num_seqs + 1] each, kv_indices [num_kv_pages], kv_last_page_len [num_seqs],
  logits_rows [num_logits_rows] (the hidden rows whose logits rank 0 samples from).

The receiving ranks rebuild the same AttentionMetadata from it, so their backends plan exactly what
rank 0's planned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.distributed as dist

from worker.engine.attention.metadata import AttentionMetadata
from worker.model.parallel import ParallelContext

HEADER_LEN = 8


class Command(enum.IntEnum):
    STEP = 1
    STOP = 2


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens], int64
    metadata: AttentionMetadata
    logits_rows: torch.Tensor  # [num_logits_rows], int64


class StepSender:
    """Rank 0's end; installed as ParallelContext.step_sender so the model runner calls ``send``."""

    def __init__(self, parallel: ParallelContext, device: torch.device) -> None:
        if parallel.rank != 0:
            raise ValueError("only rank 0 sends steps")
        self._parallel = parallel
        self._device = device

    def _broadcast_header(self, values: list[int]) -> None:
        header = torch.tensor(values + [0] * (HEADER_LEN - len(values)), dtype=torch.int64)
        dist.broadcast(header.to(self._device), src=0, group=self._parallel.group)

    def send(self, input_ids: torch.Tensor, metadata: AttentionMetadata, logits_rows: torch.Tensor) -> None:
        md = metadata
        self._broadcast_header(
            [
                Command.STEP,
                input_ids.numel(),
                md.num_seqs,
                md.kv_indices.numel(),
                logits_rows.numel(),
                md.num_decode_seqs,
                md.page_size,
            ]
        )
        parts = (
            input_ids,
            md.positions,
            md.slot_mapping,
            md.qo_indptr,
            md.kv_indptr,
            md.kv_indices,
            md.kv_last_page_len,
            logits_rows,
        )
        payload = torch.cat([p.to(device=self._device, dtype=torch.int64) for p in parts])
        dist.broadcast(payload, src=0, group=self._parallel.group)

    def stop(self) -> None:
        """Tell the other ranks to leave their step loop."""
        self._broadcast_header([Command.STOP])


class StepReceiver:
    """The end on ranks 1..N-1."""

    def __init__(self, parallel: ParallelContext, device: torch.device) -> None:
        if parallel.rank == 0:
            raise ValueError("rank 0 sends steps, it does not receive them")
        self._parallel = parallel
        self._device = device

    def receive(self) -> StepInputs | None:
        """Block until rank 0 sends the next step; None when it says stop."""
        header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self._device)
        dist.broadcast(header, src=0, group=self._parallel.group)
        command, num_tokens, num_seqs, num_kv_pages, num_rows, num_decode_seqs, page_size, _ = header.tolist()
        if command == Command.STOP:
            return None
        if command != Command.STEP:
            raise RuntimeError(f"unknown step command {command}")
        sizes = [
            num_tokens,
            num_tokens,
            num_tokens,
            num_seqs + 1,
            num_seqs + 1,
            num_kv_pages,
            num_seqs,
            num_rows,
        ]
        payload = torch.empty(sum(sizes), dtype=torch.int64, device=self._device)
        dist.broadcast(payload, src=0, group=self._parallel.group)
        ids, positions, slots, qo_indptr, kv_indptr, kv_indices, last_page_len, rows = payload.split(sizes)
        host = torch.cat([qo_indptr, kv_indptr, last_page_len]).tolist()  # one device sync
        qo, kv, last = host[: num_seqs + 1], host[num_seqs + 1 : 2 * num_seqs + 2], host[2 * num_seqs + 2 :]
        q_lens = tuple(qo[i + 1] - qo[i] for i in range(num_seqs))
        kv_lens = tuple((kv[i + 1] - kv[i] - 1) * page_size + last[i] for i in range(num_seqs))
        metadata = AttentionMetadata(
            qo_indptr=qo_indptr.to(torch.int32),
            kv_indptr=kv_indptr.to(torch.int32),
            kv_indices=kv_indices.to(torch.int32),
            kv_last_page_len=last_page_len.to(torch.int32),
            slot_mapping=slots,
            positions=positions,
            num_decode_seqs=num_decode_seqs,
            page_size=page_size,
            q_lens=q_lens,
            kv_lens=kv_lens,
        )
        return StepInputs(ids, metadata, rows)
