"""HF checkpoint directories: sharded safetensors with an index, slices, the GGUF round trip, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine, generate
from worker.engine.sampling_params import SamplingParams
from worker.loader import LoadedModel, ModelLoadError, ModelSettings, load_model
from worker.loader.checkpoint import BaseCheckpoint
from worker.loader.default_model import default_gguf_path
from worker.loader.gguf_checkpoint import GGUFCheckpoint
from worker.loader.hf_checkpoint import INDEX_FILE, HFCheckpoint
from worker.loader.settings import has_native_bf16
from worker.tokenizer import Tokenizer

PROMPTS = ["What is the capital of France?", "Name a color of the rainbow."]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """CI machines are small and shared: several spinning intra-op threads slow a 135M model down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def save_sharded(checkpoint: BaseCheckpoint, directory: Path, num_shards: int) -> None:
    """config.json + ``num_shards`` safetensors files + the index, as transformers writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**checkpoint.hf_config, "model_type": "llama"}))
    names = checkpoint.tensor_names()
    weight_map = {}
    for i in range(num_shards):
        shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = names[i::num_shards]
        save_file(
            {n: checkpoint.get_tensor(n) for n in part}, str(directory / shard), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(part, shard))
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def tiny_checkpoint_dir(directory: Path, architecture: str = "LlamaForCausalLM") -> Path:
    """A random 2-layer model in the HF layout (config.json + 2 shards), no tokenizer."""
    config = {
        "architectures": [architecture],
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    gen = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (64, 32), "model.norm.weight": (32,), "lm_head.weight": (64, 32)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (32,),
            p + "post_attention_layernorm.weight": (32,),
            p + "self_attn.q_proj.weight": (32, 32),
            p + "self_attn.k_proj.weight": (16, 32),
            p + "self_attn.v_proj.weight": (16, 32),
            p + "self_attn.o_proj.weight": (32, 32),
            p + "mlp.gate_proj.weight": (64, 32),
            p + "mlp.up_proj.weight": (64, 32),
            p + "mlp.down_proj.weight": (32, 64),
        }

    class Random(BaseCheckpoint):
        def tensor_names(self) -> list[str]:
            return list(shapes)

        def get_tensor(self, name: str) -> torch.Tensor:
            return torch.randn(shapes[name], generator=gen)

        def close(self) -> None:
            pass

    save_sharded(Random(directory, config), directory, num_shards=2)
    return directory


@pytest.fixture(scope="module")
def gguf_model() -> LoadedModel:
    return load_model(ModelSettings())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, gguf_model: LoadedModel) -> Path:
    """The default model, dequantized to float32, saved as a 3-shard HF checkpoint with its tokenizer."""
    directory = tmp_path_factory.mktemp("smollm2-hf")
    save_sharded(GGUFCheckpoint(default_gguf_path()), directory, num_shards=3)
    gguf_model.tokenizer.hf.save_pretrained(directory)
    return directory


def greedy(loaded: LoadedModel, max_tokens: int = 24) -> list[list[int]]:
    engine = Engine(loaded.model, EngineConfig(max_model_len=1024, num_pages=64), loaded.eos_token_ids)
    prompts = [loaded.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    return generate(engine, prompts, SamplingParams(max_tokens=max_tokens, temperature=0))


def test_round_trip_gives_the_same_tokens(gguf_model: LoadedModel, hf_dir: Path) -> None:
    hf_model = load_model(ModelSettings(path=str(hf_dir), max_model_len=1024))
    assert hf_model.config == gguf_model.config
    assert hf_model.eos_token_ids == gguf_model.eos_token_ids == (2,)
    messages = [{"role": "user", "content": "Crème brûlée 😀 東京"}]
    assert hf_model.tokenizer.apply_chat_template(messages) == gguf_model.tokenizer.apply_chat_template(
        messages
    )
    expected = greedy(gguf_model)
    assert greedy(hf_model) == expected
    assert "Paris" in gguf_model.tokenizer.decode(expected[0])


def test_slices_read_only_what_is_asked(hf_dir: Path) -> None:
    checkpoint = HFCheckpoint(hf_dir)
    assert len(checkpoint.tensor_names()) == 272
    name = "model.layers.5.mlp.down_proj.weight"  # [576, 1536]
    full = checkpoint.get_tensor(name)
    assert torch.equal(checkpoint.get_slice(name, 0, 288, 576), full[288:])
    assert torch.equal(checkpoint.get_slice(name, 1, 0, 768), full[:, :768])


def test_single_file_without_index(tmp_path: Path) -> None:
    directory = tiny_checkpoint_dir(tmp_path / "m")
    tensors = {n: t.clone() for n, t in HFCheckpoint(directory).weights(torch.float32)}
    for shard in directory.glob("*.safetensors"):
        shard.unlink()
    (directory / INDEX_FILE).unlink()
    save_file(tensors, str(directory / "model.safetensors"))
    assert sorted(HFCheckpoint(directory).tensor_names()) == sorted(tensors)
    loaded_tensors = dict(HFCheckpoint(directory).weights(torch.float32))
    assert all(torch.equal(loaded_tensors[n], t) for n, t in tensors.items())


def test_missing_path() -> None:
    with pytest.raises(ModelLoadError, match=r"^/no/such/model: no such file or directory$"):
        load_model(ModelSettings(path="/no/such/model"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json: file not found$"):
        load_model(ModelSettings(path=str(tmp_path)))


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    directory = tiny_checkpoint_dir(tmp_path / "gpt2", architecture="GPT2LMHeadModel")
    expected = (
        r"config\.json: unsupported architectures \['GPT2LMHeadModel'\]; "
        r"supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
    )
    with pytest.raises(ModelLoadError, match=expected):
        load_model(ModelSettings(path=str(directory)))


def test_missing_shard_is_named(tmp_path: Path) -> None:
    directory = tiny_checkpoint_dir(tmp_path / "m")
    (directory / "model-00002-of-00002.safetensors").unlink()
    checkpoint = HFCheckpoint(directory)
    with pytest.raises(
        ModelLoadError, match=r"model-00002-of-00002\.safetensors: safetensors shard not found"
    ):
        dict(checkpoint.weights(torch.float32))


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    directory = tiny_checkpoint_dir(tmp_path / "m")
    shard = directory / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    checkpoint = HFCheckpoint(directory)
    with pytest.raises(
        ModelLoadError, match=r"model-00001-of-00002\.safetensors: not a readable safetensors"
    ):
        dict(checkpoint.weights(torch.float32))


def test_tokenizer_missing_is_reported(tmp_path: Path) -> None:
    directory = tiny_checkpoint_dir(tmp_path / "m")
    with pytest.raises(ModelLoadError, match=r"/m: cannot load the tokenizer"):
        load_model(ModelSettings(path=str(directory)))


def test_chat_template_missing_is_a_value_error(gguf_model: LoadedModel, tmp_path: Path) -> None:
    gguf_model.tokenizer.hf.save_pretrained(tmp_path)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    tokenizer.hf.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tokenizer.encode("hi") == gguf_model.tokenizer.encode("hi")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ModelSettings(device="cpu")
    auto_dtype = torch.bfloat16 if has_native_bf16() else torch.float32  # the rule: test_model_settings_dtype
    assert (defaults.name, defaults.path, defaults.torch_dtype()) == ("smollm2", "default", auto_dtype)
    assert defaults.resolved_max_model_len(8192) == 8192  # 0: the model's own context length
    monkeypatch.setenv("BUSSTOP_MODEL_NAME", "my-llama")
    monkeypatch.setenv("BUSSTOP_MODEL_PATH", "/models/llama")
    monkeypatch.setenv("BUSSTOP_MODEL_DTYPE", "bfloat16")
    monkeypatch.setenv("BUSSTOP_MODEL_MAX_MODEL_LEN", "4096")
    settings = ModelSettings()
    assert (settings.name, settings.path, settings.torch_dtype()) == (
        "my-llama",
        "/models/llama",
        torch.bfloat16,
    )
    assert settings.resolved_max_model_len(8192) == 4096
    with pytest.raises(ValueError, match="exceeds the model's context length 2048"):
        settings.resolved_max_model_len(2048)
    monkeypatch.setenv("BUSSTOP_MODEL_DTYPE", "float8")
    with pytest.raises(ValueError, match="dtype"):
        ModelSettings()
