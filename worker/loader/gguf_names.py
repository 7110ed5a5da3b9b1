"""GGUF tensor names and layouts -> Hugging Face ones, for llama-architecture GGUF files.

llama.cpp's converter permutes the rows of the Q and K projections so that its RoPE can rotate
adjacent pairs (x0, x1), (x2, x3)...; HF Llama rotates the two halves of each head instead. The
inverse permutation below restores the HF layout, after which HF model code gives the same logits.
"""

from __future__ import annotations

import re

import numpy as np

_GLOBAL_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_LAYER_NAMES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str:
    """The HF name of a GGUF tensor; ValueError for one busstop has no place for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ValueError(f"unexpected tensor {gguf_name!r}")


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of a Q or K projection.

    ``weight``: [num_heads * head_dim, in_features]; ``num_heads`` is the attention heads for Q and
    the KV heads for K.
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of even size")
    # llama.cpp wrote [heads, head_dim/2, 2, ...]; HF wants [heads, 2, head_dim/2, ...].
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def permuted_heads(hf: str, num_attention_heads: int, num_key_value_heads: int) -> int | None:
    """How many heads ``hf``'s rows were permuted over, or None when it was not permuted."""
    if hf.endswith("self_attn.q_proj.weight"):
        return num_attention_heads
    if hf.endswith("self_attn.k_proj.weight"):
        return num_key_value_heads
    return None
