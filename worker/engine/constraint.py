"""Constrained decoding, as the engine sees it: a per-request object that says which tokens may come
next and is told which one did.

The engine never compiles grammars (the worker's intake does, off the step loop; see
``worker/structured``); it only asks each constrained row for its bitmask once per step and applies
all of them to the logits in one batched operation, so rows without a constraint pay nothing.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from typing import Protocol

import torch


class ConstraintError(ValueError):
    """The constraint cannot go on: the sampled token is not allowed, or nothing may follow."""


class TokenConstraint(Protocol):
    def fill_mask(self, row: torch.Tensor) -> None:
        """Write the allowed next tokens into ``row`` ([ceil(vocab / 32)], int32, cpu): bit ``t % 32``
        of word ``t // 32`` is set when token ``t`` may come next."""
        ...

    def advance(self, token_id: int) -> None:
        """Take the sampled token; ``ConstraintError`` when it breaks the constraint."""
        ...

    def replay(self, token_ids: SequenceOf[int]) -> None:
        """Take tokens produced before (a resumed request); ``ConstraintError`` if they break it."""
        ...

    @property
    def is_finished(self) -> bool:
        """The constraint is complete and nothing more may follow: the request stops here."""
        ...


def mask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def apply_token_masks(logits: torch.Tensor, rows: list[int], constraints: list[TokenConstraint]) -> None:
    """Set the logits of every token a row's constraint forbids to -inf, for all ``rows`` at once.

    logits: [num_seqs, vocab], float32, on the model's device; rows[i] is constrained by constraints[i].
    """
    num_seqs, vocab_size = logits.shape
    masks = torch.zeros((len(rows), mask_words(vocab_size)), dtype=torch.int32)  # [num_rows, words], cpu
    for row, constraint in zip(masks, constraints, strict=True):
        constraint.fill_mask(row)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (masks.to(logits.device, non_blocking=True)[:, :, None] >> shifts) & 1  # [num_rows, words, 32]
    allowed = bits.flatten(1)[:, :vocab_size].bool()  # [num_rows, vocab]
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
