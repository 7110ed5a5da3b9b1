"""Tiny random Llama-family models shared by the engine tests: HF reference and our model, same weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import transformers

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM

TINY: dict[str, Any] = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; several threads per process thrash a shared CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_hf_model(architecture: str = "LlamaForCausalLM", seed: int = 0, **overrides: Any
                  ) -> transformers.PreTrainedModel:
    """A randomly initialised transformers model of the given architecture, fp32, eval mode."""
    config_cls = {"LlamaForCausalLM": transformers.LlamaConfig,
                  "MistralForCausalLM": transformers.MistralConfig,
                  "Qwen2ForCausalLM": transformers.Qwen2Config}[architecture]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **overrides})
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():  # larger random weights, so logits differ clearly between tokens
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def our_model(hf_model: transformers.PreTrainedModel) -> LlamaForCausalLM:
    config_dict = hf_model.config.to_dict()
    config_dict["architectures"] = [type(hf_model).__name__]
    model = LlamaForCausalLM(ModelConfig.from_hf_config(config_dict))
    model.load_weights(hf_model.state_dict().items())
    return model


def make_engine(hf_model: transformers.PreTrainedModel, eos_token_ids: tuple[int, ...] = (), **config: Any
                ) -> Engine:
    defaults: dict[str, Any] = dict(page_size=4, num_pages=128, max_model_len=256)
    return Engine(our_model(hf_model), EngineConfig(**{**defaults, **config}), eos_token_ids)


@torch.no_grad()
def reference_greedy(hf_model: transformers.PreTrainedModel, prompt: list[int], max_tokens: int
                     ) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens by full recompute (no KV cache), and the log-softmax at each generated position."""
    ids = list(prompt)
    logprobs = []
    for _ in range(max_tokens):
        logits = hf_model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        logprobs.append(logits.log_softmax(-1))
        ids.append(int(logits.argmax()))
    return ids[len(prompt):], logprobs


def assert_page_accounting(engine: Engine) -> None:
    bm = engine.block_manager
    used = sum(1 for r in bm.ref_counts if r > 0)
    assert bm.num_free_pages + used == bm.num_total_pages
    assert all(r >= 0 for r in bm.ref_counts)
