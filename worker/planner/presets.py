"""Well-known models as the fields of their Hugging Face ``config.json`` that sizing needs.

Numbers are copied from each model's published config.json (the Instruct variants where one
exists; sizes are the same as the base model's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama31(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": _LLAMA31_ROPE,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": "bfloat16",
    }


def _qwen25(
    vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "attention_bias": True,  # Qwen2 has q/k/v biases; transformers implies it from the architecture
        "torch_dtype": "bfloat16",
    }


PRESETS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": _llama31(hidden=4096, intermediate=14336, layers=32, heads=32),
    "Llama-3.1-70B": _llama31(hidden=8192, intermediate=28672, layers=80, heads=64),
    "Llama-3.1-405B": _llama31(hidden=16384, intermediate=53248, layers=126, heads=128),
    "Qwen2.5-7B": _qwen25(vocab=152064, hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4),
    "Qwen2.5-72B": _qwen25(vocab=152064, hidden=8192, intermediate=29568, layers=80, heads=64, kv_heads=8),
    "Mistral-7B": {  # Mistral-7B-Instruct-v0.3
        "architectures": ["MistralForCausalLM"],
        "vocab_size": 32768,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": "bfloat16",
    },
    "SmolLM2-135M": {  # SmolLM2-135M-Instruct, the default model
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "rope_scaling": None,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "torch_dtype": "bfloat16",
    },
}


def resolve_model(model: str) -> tuple[str, dict[str, Any]]:
    """(name, HF config dict) for a preset name (case-insensitive), a config.json, or a checkpoint dir."""
    by_lower = {name.lower(): name for name in PRESETS}
    if model.lower() in by_lower:
        name = by_lower[model.lower()]
        return name, PRESETS[name]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{model!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json or model dir"
        )
    with path.open() as f:
        return path.parent.name or str(path), json.load(f)
