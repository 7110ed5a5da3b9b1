"""Model factories for the tensor-parallel tests; module-level so that spawned rank processes can use them."""

from __future__ import annotations

from typing import Any

import torch

from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM
from worker.model.parallel import ParallelContext


def tiny_config(num_heads: int, num_kv_heads: int, **overrides: Any) -> ModelConfig:
    d: dict[str, Any] = dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=251,
        hidden_size=16 * num_heads,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return ModelConfig.from_hf_config({**d, **overrides})


def full_weights(config: ModelConfig, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Every HF-named tensor of a random model, the same on every rank for the same seed."""
    g = torch.Generator().manual_seed(seed)
    h, hd, i = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    weights = [("model.embed_tokens.weight", randn(config.vocab_size, h))]
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        weights += [
            (p + "self_attn.q_proj.weight", randn(q, h)),
            (p + "self_attn.k_proj.weight", randn(kv, h)),
            (p + "self_attn.v_proj.weight", randn(kv, h)),
            (p + "self_attn.o_proj.weight", randn(h, q)),
            (p + "mlp.gate_proj.weight", randn(i, h)),
            (p + "mlp.up_proj.weight", randn(i, h)),
            (p + "mlp.down_proj.weight", randn(h, i)),
            (p + "input_layernorm.weight", 1 + randn(h)),
            (p + "post_attention_layernorm.weight", 1 + randn(h)),
        ]
    weights.append(("model.norm.weight", 1 + randn(h)))
    if not config.tie_word_embeddings:
        weights.append(("lm_head.weight", randn(config.vocab_size, h)))
    return weights


def tiny_model(
    parallel: ParallelContext, num_heads: int, num_kv_heads: int, seed: int = 0
) -> LlamaForCausalLM:
    config = tiny_config(num_heads, num_kv_heads)
    model = LlamaForCausalLM(config, parallel)
    model.load_weights(full_weights(config, seed))
    return model.eval()
