"""Vocabulary-parallel token embedding and LM head.

Rank r owns vocabulary rows [r*n, (r+1)*n). The embedding zeroes ids it does not own and all-reduces;
the head computes its vocabulary slice of the logits and all-gathers them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.kernels.linear import logits_linear
from worker.model.parallel import SINGLE, ParallelContext


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, parallel: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        # Pad so the vocabulary splits evenly; padded rows are never indexed by real ids.
        self.num_rows_per_rank = -(-vocab_size // parallel.world_size)
        self.vocab_start = parallel.rank * self.num_rows_per_rank
        self.weight = nn.Parameter(torch.zeros(self.num_rows_per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != self.vocab_size or loaded.shape[1] != param.shape[1]:
            raise ValueError(f"embedding shape {tuple(loaded.shape)} does not match "
                             f"({self.vocab_size}, {param.shape[1]})")
        rows = loaded[self.vocab_start:self.vocab_start + self.num_rows_per_rank]
        with torch.no_grad():  # through the parameter: its version counter moves (worker/kernels/linear.py)
            param[: rows.shape[0]].copy_(rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.world_size == 1:
            return F.embedding(input_ids, self.weight)  # [num_tokens, hidden]
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_rows_per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.parallel.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over the vocabulary, in float32 (``logits_linear``); tied heads share the embedding's weight
    tensor."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = logits_linear(hidden, self.weight)  # [num_seqs, num_rows_per_rank], float32
        logits = self.parallel.all_gather(logits, dim=-1)
        return logits[:, : self.vocab_size]
