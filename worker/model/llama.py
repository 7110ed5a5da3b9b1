"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) over a flat batch of tokens.

The batch is one flat [num_tokens] vector mixing prefill chunks and decode tokens of many sequences;
which token belongs to which sequence is known only to the attention backend's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from worker.kernels.linear import linear
from worker.model.attention import KVCacheLayer, PagedAttention
from worker.model.config import ModelConfig
from worker.model.layers.activation import silu_and_mul
from worker.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from worker.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from worker.model.layers.norm import RMSNorm, rms_norm
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
                                        parallel)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, False, parallel)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, parallel)


class LlamaDecoderLayer(nn.Module):
    """A decoder layer's parameters, named as the checkpoints name them; ``decoder_layer`` runs it."""

    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, parallel)
        self.mlp = LlamaMLP(config, parallel)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def tensors(self) -> LayerTensors:
        attn, mlp = self.self_attn, self.mlp
        q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        return LayerTensors(
            input_norm=self.input_layernorm.weight, post_norm=self.post_attention_layernorm.weight,
            eps=self.input_layernorm.eps, qkv=attn.qkv_proj.weight, qkv_bias=attn.qkv_proj.bias,
            o=attn.o_proj.weight, gate_up=mlp.gate_up_proj.weight, down=mlp.down_proj.weight,
            qkv_split=(q_size, kv_size, kv_size), num_heads=attn.num_heads,
            num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim, parallel=attn.o_proj.parallel)


@dataclass(frozen=True, slots=True)
class LayerTensors:
    """One decoder layer's parameters as plain references. The step reads about 16 of them a layer:
    through nn.Module's attribute lookup and ``__call__`` that cost ~1 ms of a 13 ms batch-1 step (bf16,
    SmolLM2-135M, one CPU thread). In-place weight loads and ``Module.to`` keep these tensors current."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    qkv_split: tuple[int, int, int]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    parallel: ParallelContext


def decoder_layer(t: LayerTensors, hidden: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor,
                  sin: torch.Tensor, attention: PagedAttention, kv_layer: KVCacheLayer
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, residual) [num_tokens, hidden_size] through one layer; the residual add is fused into
    the next norm, so the layer returns its output and the residual stream apart."""
    n = hidden.shape[0]
    hidden, residual = rms_norm(hidden, residual, t.input_norm, t.eps)
    q, k, v = linear(hidden, t.qkv, t.qkv_bias).split(t.qkv_split, dim=-1)
    q, k = apply_rope_qk(q.view(n, t.num_heads, t.head_dim), k.view(n, t.num_kv_heads, t.head_dim), cos, sin)
    out = attention.forward(q, k, v.view(n, t.num_kv_heads, t.head_dim), kv_layer[0], kv_layer[1])
    hidden = t.parallel.all_reduce(linear(out.view(n, t.qkv_split[0]), t.o))
    hidden, residual = rms_norm(hidden, residual, t.post_norm, t.eps)
    return t.parallel.all_reduce(linear(silu_and_mul(linear(hidden, t.gate_up)), t.down)), residual


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
        self._layer_tensors: tuple[LayerTensors, ...] | None = None

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
        for tensors, kv_layer in zip(self.layer_tensors(), kv_cache, strict=True):
            hidden, residual = decoder_layer(tensors, hidden, residual, cos, sin, attention, kv_layer)
        hidden, _ = self.model.norm(hidden, residual)
        return hidden

    def _apply(self, fn: Any, recurse: bool = True) -> LlamaForCausalLM:
        self._layer_tensors = None
        return super()._apply(fn, recurse)

    def layer_tensors(self) -> tuple[LayerTensors, ...]:
        """Taken from the layers on first use and kept until ``_apply`` (``to``, ``half``...) may have
        replaced the parameters; in-place weight loads keep the same objects."""
        if self._layer_tensors is None:
            layers = cast(Iterable[LlamaDecoderLayer], self.model.layers)
            self._layer_tensors = tuple(layer.tensors() for layer in layers)
        return self._layer_tensors

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
