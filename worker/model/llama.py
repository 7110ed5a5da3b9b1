"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) over a flat batch of tokens.

The batch is one flat [num_tokens] vector mixing prefill chunks and decode tokens of many sequences;
which token belongs to which sequence is known only to the attention backend's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from worker.model.attention import KVCacheLayer, PagedAttention
from worker.model.config import ModelConfig
from worker.model.layers.activation import silu_and_mul
from worker.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from worker.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from worker.model.layers.norm import RMSNorm
from worker.model.parallel import SINGLE, ParallelContext
from worker.model.rope import RotaryEmbedding, apply_rope_qk

# HF name fragment -> (our merged parameter fragment, shard id)
_MERGED = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, config.attention_bias, parallel)
        self.num_heads = self.qkv_proj.num_heads_per_rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads_per_rank
        self.o_proj = RowParallelLinear(config.num_attention_heads * config.head_dim, config.hidden_size,
                                        False, parallel)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention: PagedAttention, kv_layer: KVCacheLayer) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        q, k = apply_rope_qk(q.view(num_tokens, self.num_heads, self.head_dim),
                             k.view(num_tokens, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        out = attention.forward(q, k, v, kv_layer[0], kv_layer[1])  # [num_tokens, num_heads, head_dim]
        return self.o_proj(out.reshape(num_tokens, q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, False, parallel)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, False, parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, parallel)
        self.mlp = LlamaMLP(config, parallel)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor, attention: PagedAttention, kv_layer: KVCacheLayer
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, attention, kv_layer)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, parallel)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, parallel) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.model = LlamaModel(config, parallel)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, parallel)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_shape(self) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim) of this rank's attention layers."""
        attn = cast(LlamaAttention, self.model.layers[0].self_attn)
        return attn.num_heads, attn.num_kv_heads, attn.head_dim

    @property
    def num_kv_heads_per_rank(self) -> int:
        return self.attention_shape[1]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: PagedAttention,
                kv_cache: Sequence[KVCacheLayer]) -> torch.Tensor:
        """input_ids, positions: [num_tokens] int64 -> hidden [num_tokens, hidden_size]."""
        hidden = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb.cos_sin(positions, hidden.dtype)
        residual: torch.Tensor | None = None
        for i, layer in enumerate(self.model.layers):
            hidden, residual = layer(hidden, residual, cos, sin, attention, kv_cache[i])
        hidden, _ = self.model.norm(hidden, residual)
        return hidden

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [num_seqs, hidden_size] (the rows to sample from) -> logits [num_seqs, vocab_size]."""
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named FULL tensors; each parameter's weight_loader keeps this rank's shard.

        Raises ValueError on an unknown name or when a parameter is left unloaded.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            tied_head = name == "lm_head.weight" and self.config.tie_word_embeddings
            if "rotary_emb.inv_freq" in name or tied_head:
                continue
            target, shard_id = name, None
            for hf_part, (our_part, sid) in _MERGED.items():
                if hf_part in name:
                    target, shard_id = name.replace(hf_part, our_part), sid
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"unexpected weight {name!r} for {self.config.architecture}")
            with torch.no_grad():
                tensor = tensor.to(param.dtype)
                if shard_id is None:
                    param.weight_loader(param, tensor)  # type: ignore[attr-defined]
                else:
                    param.weight_loader(param, tensor, shard_id)  # type: ignore[attr-defined]
            loaded.add(name)
        expected = self._expected_weight_names()
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"missing weights: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")

    def _expected_weight_names(self) -> set[str]:
        names: set[str] = set()
        for name in dict(self.named_parameters(remove_duplicate=False)):
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if ".qkv_proj." in name:
                names.update(name.replace(".qkv_proj.", f".{p}_proj.") for p in "qkv")
            elif ".gate_up_proj." in name:
                names.update(name.replace(".gate_up_proj.", f".{p}_proj.") for p in ("gate", "up"))
            else:
                names.add(name)
        return names
