"""Grammars compiled once per distinct text, and the per-request matchers the engine advances.

Compiling (``LLMatcher`` over the model's vocabulary) runs on the intake side, in a thread; the engine
only sees ``GrammarConstraint``, a ``TokenConstraint``. A compiled grammar is kept pristine in a small
cache keyed by its text, and every request gets its own cheap copy, so a Batch job whose lines share
one schema compiles it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence as SequenceOf

import llguidance
import llguidance.hf
import torch
from transformers import PreTrainedTokenizerBase

from shared.structured import grammar_error, parser_limits
from worker.engine.constraint import ConstraintError


class GrammarError(ValueError):
    """The grammar cannot be compiled for this model."""


class GrammarConstraint:
    """One request's position in its grammar (llguidance's matcher)."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def fill_mask(self, row: torch.Tensor) -> None:
        # row: [words], int32, cpu, contiguous (a row of the step's mask tensor)
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self._matcher.is_error():  # out of its per-token budget: the next advance says so
            row.zero_()

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise ConstraintError(self._matcher.get_error() or f"token {token_id} is not allowed here")

    def replay(self, token_ids: SequenceOf[int]) -> None:
        if not self._matcher.consume_tokens(list(token_ids)):
            raise ConstraintError(self._matcher.get_error() or "the tokens do not match the grammar")

    @property
    def is_finished(self) -> bool:
        return self._matcher.is_stopped()


class GrammarCompiler:
    """Compiles grammars (shared/structured.py's dialect) for one model's vocabulary."""

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, vocab_size: int, cache_size: int = 128) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def tokenizer(self) -> llguidance.LLTokenizer:
        """The vocabulary in llguidance's form: ~0.3 s for 49k tokens, built on first use, then kept."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._vocab_size  # type: ignore[arg-type]
                )
            return self._tokenizer

    def compile(self, grammar: str) -> GrammarConstraint:
        """A fresh constraint for ``grammar``; ``GrammarError`` when it cannot be compiled."""
        with self._lock:
            pristine = self._cache.get(grammar)
            if pristine is not None:
                self._cache.move_to_end(grammar)
        if pristine is None:
            tokenizer = self.tokenizer()
            if (why := grammar_error(grammar, tokenizer)) is not None:
                raise GrammarError(why)
            pristine = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=parser_limits())
            if pristine.is_error():
                raise GrammarError(pristine.get_error())
            with self._lock:
                self._cache[grammar] = pristine
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return GrammarConstraint(pristine.deep_copy())
