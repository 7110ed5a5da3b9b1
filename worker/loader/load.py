"""settings -> a ready model: checkpoint, config, weights on the device, tokenizer, EOS ids."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from worker.loader.checkpoint import BaseCheckpoint
from worker.loader.default_model import default_gguf_path
from worker.loader.errors import ModelLoadError
from worker.loader.gguf_checkpoint import GGUFCheckpoint
from worker.loader.hf_checkpoint import CONFIG_FILE, HFCheckpoint, read_json
from worker.loader.progress import with_progress
from worker.loader.settings import DEFAULT_MODEL_PATH, ModelSettings
from worker.loader.tokenizer_cache import gguf_tokenizer
from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM
from worker.model.parallel import SINGLE, ParallelContext
from worker.parallel.shard_weights import rank_weights
from worker.tokenizer import Tokenizer


@dataclass(frozen=True)
class LoadedModel:
    """What the worker service needs to serve a model."""

    name: str  # the served model name
    config: ModelConfig
    model: LlamaForCausalLM
    tokenizer: Tokenizer
    eos_token_ids: tuple[int, ...]
    max_model_len: int  # the context window served (settings, or the model's own)


def resolve_path(path: str) -> str:
    """``default`` -> the bundled GGUF; anything else must exist."""
    if path == DEFAULT_MODEL_PATH:
        return default_gguf_path()
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ModelLoadError(path, "no such file or directory")
    return path


def open_checkpoint(path: str) -> tuple[BaseCheckpoint, str]:
    """The checkpoint at a resolved ``path``, and the file its config came from (for error messages)."""
    if os.path.isdir(path):
        return HFCheckpoint(path), os.path.join(path, CONFIG_FILE)
    if path.endswith(".gguf"):
        return GGUFCheckpoint(path), path
    raise ModelLoadError(path, "expected a .gguf file or a directory with config.json and *.safetensors")


def load_tokenizer(path: str, cache_dir: str = "") -> Tokenizer:
    """A checkpoint directory's tokenizer files, or a GGUF's vocabulary (converted once into
    ``cache_dir``, when given)."""
    try:
        if os.path.isdir(path):
            return Tokenizer.from_pretrained(path)
        return gguf_tokenizer(path, cache_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(path, f"cannot load the tokenizer ({type(exc).__name__}: {exc})") from None


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def eos_token_ids(checkpoint: BaseCheckpoint, tokenizer: Tokenizer) -> tuple[int, ...]:
    """Every id that ends a sequence: config.json, generation_config.json (HF) and the tokenizer's EOS."""
    ids = _as_ids(checkpoint.hf_config.get("eos_token_id"))
    generation_config = os.path.join(checkpoint.path, "generation_config.json")
    if os.path.isfile(generation_config):
        ids += _as_ids(read_json(generation_config).get("eos_token_id"))
    ids += _as_ids(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(ids))


def model_config(checkpoint: BaseCheckpoint, config_path: str) -> ModelConfig:
    try:
        return ModelConfig.from_hf_config(checkpoint.hf_config)
    except KeyError as exc:
        raise ModelLoadError(config_path, f"config lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(config_path, str(exc)) from None


def build_model(
    config: ModelConfig,
    weights: Iterable[tuple[str, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    parallel: ParallelContext = SINGLE,
) -> LlamaForCausalLM:
    """Allocate the model directly on ``device`` in ``dtype`` (no float32 copy first), then fill it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config, parallel)
    finally:
        torch.set_default_dtype(previous)
    model.load_weights(weights)
    return model.eval()


def load_model(settings: ModelSettings, parallel: ParallelContext = SINGLE) -> LoadedModel:
    """Load ``settings.path``: ``default`` (bundled SmolLM2 GGUF), a .gguf file or an HF directory.

    Every problem with the files is a ModelLoadError naming the file.
    """
    path = resolve_path(settings.path)
    checkpoint, config_path = open_checkpoint(path)
    try:
        config = model_config(checkpoint, config_path)
        try:
            max_model_len = settings.resolved_max_model_len(config.max_position_embeddings)
        except ValueError as exc:
            raise ModelLoadError(config_path, str(exc)) from None
        tokenizer = load_tokenizer(path, settings.tokenizer_cache_dir)
        try:
            # A TP rank reads only its slices of each matrix.
            weights = (
                checkpoint.weights(settings.torch_dtype())
                if parallel.world_size == 1
                else rank_weights(checkpoint, settings.torch_dtype())
            )
            what = f"loading {os.path.basename(path)}"
            if parallel.world_size > 1:
                what += f" (rank {parallel.rank})"
            model = build_model(
                config,
                with_progress(weights, len(checkpoint.tensor_names()), what),
                settings.torch_device(),
                settings.torch_dtype(),
                parallel,
            )
        except ValueError as exc:  # names or shapes that do not fit the architecture
            raise ModelLoadError(path, str(exc)) from None
        return LoadedModel(
            name=settings.name,
            config=config,
            model=model,
            tokenizer=tokenizer,
            eos_token_ids=eos_token_ids(checkpoint, tokenizer),
            max_model_len=max_model_len,
        )
    finally:
        checkpoint.close()
