"""GGUF files (llama.cpp's format): metadata -> HF config, quantized tensors -> dequantized HF tensors.

The file is memory-mapped (``gguf_file.py`` parses its header); each tensor is dequantized, by the
``gguf`` package, only when it is asked for, so peak memory is the model in the serving dtype plus one
float32 tensor.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from worker.loader.checkpoint import BaseCheckpoint
from worker.loader.errors import ModelLoadError
from worker.loader.gguf_file import GGUFFile
from worker.loader.gguf_names import hf_name, permuted_heads, unpermute_rows

# GGUF `general.architecture` -> HF architecture. Mistral GGUFs are written as "llama" too.
SUPPORTED_GGUF_ARCHITECTURES: dict[str, str] = {"llama": "LlamaForCausalLM"}


def _open_reader(path: str) -> GGUFFile:
    # The reader maps the whole file and views every tensor in it, so a file cut short fails here.
    try:
        return GGUFFile(path)
    except Exception as exc:  # ValueError, IndexError, OverflowError... depending on where the bytes end
        raise ModelLoadError(path, f"truncated or corrupt GGUF file ({type(exc).__name__}: {exc})") from None


def _field(reader: GGUFFile, key: str) -> Any:
    return reader.fields.get(key)


def _hf_config(reader: GGUFFile, path: str, tensor_names: set[str]) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ModelLoadError(
            path,
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}",
        )
    rope_scaling = _field(reader, f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in tensor_names or rope_scaling not in (None, "none"):
        raise ModelLoadError(path, "RoPE scaling in GGUF files is not supported; use the HF checkpoint")

    def need(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(path, f"GGUF metadata lacks {arch}.{key}")
        return value

    num_heads = int(need("attention.head_count"))
    hidden_size = int(need("embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = _field(reader, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab_size is None:
        raise ModelLoadError(path, f"GGUF metadata lacks {arch}.vocab_size and tokenizer.ggml.tokens")
    head_dim = _field(reader, f"{arch}.attention.key_length") or hidden_size // num_heads
    return {
        "architectures": [SUPPORTED_GGUF_ARCHITECTURES[arch]],
        "vocab_size": int(vocab_size),
        "hidden_size": hidden_size,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv") or num_heads),
        "head_dim": int(head_dim),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base") or 10000.0),
        "max_position_embeddings": int(need("context_length")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }


class GGUFCheckpoint(BaseCheckpoint):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        reader = _open_reader(path)
        self._tensors = {}
        for t in reader.tensors.values():
            try:
                self._tensors[hf_name(t.name)] = t
            except ValueError as exc:
                raise ModelLoadError(path, str(exc)) from None
        super().__init__(path, _hf_config(reader, path, set(reader.tensors)))

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._read_rows(name, 0, self.tensor_shape(name)[0])

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) dequantize alone: each quantized block lies within one row.

        Q/K rows were permuted within each head, so their slices must cover whole heads (TP shards do).
        """
        shape = self.tensor_shape(name)
        head_dim = self.hf_config["head_dim"]
        is_permuted = self._permuted_heads(name) is not None
        if dim != 0 or len(shape) < 2 or (is_permuted and (start % head_dim or stop % head_dim)):
            return super().get_slice(name, dim, start, stop)
        return self._read_rows(name, start, stop)

    def _permuted_heads(self, name: str) -> int | None:
        return permuted_heads(
            name, self.hf_config["num_attention_heads"], self.hf_config["num_key_value_heads"]
        )

    def _read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the HF-layout tensor (all of a 1-D one), float32."""
        t = self._tensors[name]
        shape = self.tensor_shape(name)
        raw = t.data if len(shape) < 2 else t.data[start:stop]  # [rows, bytes or values per row]
        try:
            data = dequantize(raw, t.tensor_type)
        except NotImplementedError as exc:
            raise ModelLoadError(self.path, f"tensor {t.name}: {exc}") from None
        if t.tensor_type == GGMLQuantizationType.F32:
            data = np.array(data)  # dequantize returns a read-only view of the map for F32
        weight = data.reshape(shape if len(shape) < 2 else (stop - start, *shape[1:]))
        num_heads = self._permuted_heads(name)
        if num_heads is not None:
            weight = unpermute_rows(weight, num_heads * (stop - start) // shape[0])
        return torch.from_numpy(np.ascontiguousarray(weight))

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dims innermost first: [in_features, out_features] is an HF [out, in] matrix.
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def close(self) -> None:
        self._tensors = {}  # the tensors hold the file's memory map
