"""Text <-> token ids for one model, through transformers' tokenizer, offline.

Runs off the engine's step loop (the worker's I/O side). Decoding never "cleans up" spaces, so that
decoding in pieces and decoding at once give the same text (see IncrementalDetokenizer).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from worker.tokenizer import tool_prompt


class Tokenizer:
    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase) -> None:
        self.hf = hf_tokenizer

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], gguf_file: str | None = None) -> Tokenizer:
        """From a checkpoint directory's tokenizer files, or from the vocabulary inside ``gguf_file``."""
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        return cls(AutoTokenizer.from_pretrained(os.fspath(directory), **kwargs))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The longest UTF-8 text any single token stands for (a bound on bytes per token)."""
        tokens = self.hf.convert_ids_to_tokens(list(range(len(self.hf))))
        return max(len(self.hf.convert_tokens_to_string([t]).encode("utf-8")) for t in tokens if t)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.chat_template)

    def encode(self, text: str) -> list[int]:
        """A raw prompt, with the special tokens the model expects around it (e.g. Llama's BOS)."""
        return list(self.hf.encode(text, add_special_tokens=True))

    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The chat template's text; ValueError when the model has no template or rejects the messages.

        ``tools`` (OpenAI's tool objects) go to a template that renders them, else into the system
        message (worker/tokenizer/tool_prompt.py)."""
        if not self.has_chat_template:
            raise ValueError("this model has no chat template; send a prompt instead of messages")
        extra: dict[str, Any] = {}
        if tool_prompt.template_renders_tools(str(self.hf.chat_template)):
            messages = tool_prompt.for_template(messages)
            if tools:
                extra["tools"] = list(tools)
        else:
            messages = tool_prompt.written_out(messages, tools)
        try:
            text = self.hf.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **extra
            )
        except TemplateError as exc:  # the template's own raise_exception(): roles out of order etc.
            raise ValueError(str(exc)) from exc
        return str(text)

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        # The template writes the special tokens itself (BOS, <|im_start|>...): add none on top.
        text = self.render_chat(messages, add_generation_prompt, tools)
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self.hf.decode(
            list(token_ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
        return str(text)  # one sequence in, one string out
