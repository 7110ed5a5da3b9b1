"""Tokenization, chat templates and streaming detokenization for the worker's I/O side."""

from worker.tokenizer.detokenizer import IncrementalDetokenizer
from worker.tokenizer.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "Tokenizer"]
