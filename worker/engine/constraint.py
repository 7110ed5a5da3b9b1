"""Constrained decoding, as the engine sees it: a per-request object that says which tokens may come
next and is told which one did.

The engine never compiles grammars (the worker's intake does, off the step loop; see
``worker/structured``); it only asks each constrained row for its bitmask once per step, after the
forward pass, and applies all of them to the logits in one batched operation, so rows without a
constraint pay nothing. (Computing the masks in a thread beside the forward pass was measured 8-78%
slower on CPU: the thread fights the model for cores and the GIL.)
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


def fill_token_masks(constraints: list[TokenConstraint], vocab_size: int) -> torch.Tensor:
    """Each constraint's allowed next tokens: [len(constraints), ceil(vocab / 32)], int32, cpu."""
    masks = torch.zeros((len(constraints), mask_words(vocab_size)), dtype=torch.int32)
    for row, constraint in zip(masks, constraints, strict=True):
        constraint.fill_mask(row)
    return masks


# FORBIDDEN[b, k]: bit k of byte b is clear. Masks are little-endian words, so byte t // 8 of a row
# holds token t at bit t % 8, and one gather turns a row's bytes into its forbidden tokens.
_FORBIDDEN = (torch.arange(256)[:, None] >> torch.arange(8)) & 1 == 0  # [256, 8], bool


def apply_token_masks(logits: torch.Tensor, rows: list[int], masks: torch.Tensor) -> None:
    """Set the logits of every token a row's mask forbids to -inf, for all ``rows`` at once.

    logits: [num_seqs, vocab], float32, on the model's device; masks[i] ([words], int32, cpu) is row
    rows[i]'s, from ``fill_token_masks``.
    """
    num_seqs, vocab_size = logits.shape
    device = logits.device
    table = _FORBIDDEN.to(device)
    forbidden = table[masks.view(torch.uint8).to(device, non_blocking=True).long()]  # [rows, bytes, 8]
    forbidden = forbidden.flatten(1)[:, :vocab_size]  # [num_rows, vocab], bool
    if len(rows) == num_seqs:  # every row constrained (a Batch job of one schema): no gather
        logits.masked_fill_(forbidden, float("-inf"))
        return
    index = torch.tensor(rows, device=device)
    logits[index] = logits[index].masked_fill(forbidden, float("-inf"))
