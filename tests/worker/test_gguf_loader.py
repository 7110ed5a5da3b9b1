"""GGUF reading: names, the Q/K unpermute, config from metadata, slices, and errors on bad files.

The dequantized weights are compared with transformers' own GGUF loader in test_default_model.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from worker.loader.default_model import default_gguf_path
from worker.loader.errors import ModelLoadError
from worker.loader.gguf_checkpoint import GGUFCheckpoint
from worker.loader.gguf_file import GGUFFile
from worker.loader.gguf_names import hf_name, unpermute_rows
from worker.model.config import ModelConfig


def llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, as written there."""
    return (
        weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(path: Path, arch: str = "llama") -> None:
    """A 1-layer model with random float32 weights, written by the gguf package's writer."""
    rng = np.random.default_rng(0)
    hidden, heads, kv_heads, ffn, vocab = 16, 4, 2, 32, 64
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    shapes = {
        "token_embd.weight": (vocab, hidden),
        "output_norm.weight": (hidden,),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden),
        "blk.0.attn_k.weight": (hidden * kv_heads // heads, hidden),
        "blk.0.attn_v.weight": (hidden * kv_heads // heads, hidden),
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def checkpoint() -> GGUFCheckpoint:
    return GGUFCheckpoint(default_gguf_path())


def test_unpermute_inverts_llama_cpp_permute() -> None:
    for num_heads in (1, 3, 8):
        w = np.arange(num_heads * 64 * 3, dtype=np.float32).reshape(num_heads * 64, 3)
        assert not np.array_equal(llama_cpp_permute(w, num_heads), w)
        assert np.array_equal(unpermute_rows(llama_cpp_permute(w, num_heads), num_heads), w)


def test_names_map_to_hf() -> None:
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    with pytest.raises(ValueError, match="unexpected tensor"):
        hf_name("blk.0.attn_qkv.weight")


def test_default_config_from_metadata(checkpoint: GGUFCheckpoint) -> None:
    config = ModelConfig.from_hf_config(checkpoint.hf_config)
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.vocab_size == 49152 and config.tie_word_embeddings
    assert config.rope_theta == 100000.0
    assert "lm_head.weight" not in checkpoint.tensor_names()


@pytest.mark.parametrize(
    ("name", "dim", "start", "stop"),
    [
        ("model.layers.3.self_attn.k_proj.weight", 0, 64, 128),  # one KV head (permuted rows)
        ("model.layers.3.self_attn.q_proj.weight", 0, 192, 576),  # heads 3..8
        ("model.layers.3.self_attn.q_proj.weight", 0, 10, 100),  # not head-aligned: read whole
        ("model.layers.3.self_attn.k_proj.weight", 1, 10, 20),
        ("model.embed_tokens.weight", 0, 24576, 49152),  # Q8_0
        ("model.layers.0.mlp.down_proj.weight", 0, 0, 288),  # Q4_1
        ("model.layers.0.input_layernorm.weight", 0, 100, 200),  # F32 vector
    ],
)
def test_slice_is_a_slice_of_the_tensor(
    checkpoint: GGUFCheckpoint, name: str, dim: int, start: int, stop: int
) -> None:
    full = checkpoint.get_tensor(name)
    assert tuple(full.shape) == checkpoint.tensor_shape(name)
    assert torch.equal(checkpoint.get_slice(name, dim, start, stop), full.narrow(dim, start, stop - start))


def test_tiny_gguf_unpermutes_q_and_k(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    ck = GGUFCheckpoint(path)
    assert ck.hf_config["num_key_value_heads"] == 2 and ck.hf_config["tie_word_embeddings"]
    q = ck.get_tensor("model.layers.0.self_attn.q_proj.weight").numpy()
    k = ck.get_tensor("model.layers.0.self_attn.k_proj.weight").numpy()
    assert np.array_equal(llama_cpp_permute(q, 4), raw["blk.0.attn_q.weight"])
    assert np.array_equal(llama_cpp_permute(k, 2), raw["blk.0.attn_k.weight"])
    v = ck.get_tensor("model.layers.0.self_attn.v_proj.weight").numpy()
    assert np.array_equal(v, raw["blk.0.attn_v.weight"])


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch="gpt2")
    expected = r"tiny\.gguf: unsupported GGUF architecture 'gpt2'; supported: llama"
    with pytest.raises(ModelLoadError, match=expected):
        GGUFCheckpoint(path)


def test_truncated_file(tmp_path: Path) -> None:
    source = default_gguf_path()
    path = tmp_path / "truncated.gguf"
    with open(source, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(os.path.getsize(source) // 2))
    with pytest.raises(ModelLoadError, match=r"truncated\.gguf: truncated or corrupt GGUF file"):
        GGUFCheckpoint(path)


def test_truncated_header(tmp_path: Path) -> None:
    source = default_gguf_path()
    path = tmp_path / "header.gguf"
    with open(source, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(4096))
    with pytest.raises(ModelLoadError, match=r"header\.gguf: truncated or corrupt GGUF file"):
        GGUFCheckpoint(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    expected = r"model\.gguf: truncated or corrupt GGUF file \(ValueError: GGUF magic"
    with pytest.raises(ModelLoadError, match=expected):
        GGUFCheckpoint(path)


@pytest.mark.parametrize("which", ["default", "tiny"])
def test_header_parse_agrees_with_the_gguf_package(which: str, tmp_path: Path) -> None:
    """Every metadata value and every tensor view equals what the ``gguf`` package's reader gives."""
    path = default_gguf_path() if which == "default" else tmp_path / "tiny.gguf"
    if which == "tiny":
        write_tiny_gguf(path)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    their_keys = [k for k in theirs.fields if not k.startswith("GGUF.")]  # the reader's own header fields
    assert list(ours.fields) == their_keys
    for key in their_keys:
        expected = theirs.fields[key].contents()
        assert ours.fields[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert (mine.tensor_type, mine.shape) == (t.tensor_type, tuple(int(d) for d in t.shape))
        assert mine.data.dtype == t.data.dtype and np.array_equal(mine.data, t.data), t.name
