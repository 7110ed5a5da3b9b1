"""Hugging Face checkpoint directories: config.json and (sharded) safetensors, memory-mapped.

Shards are opened with ``safe_open`` (an mmap); a tensor's bytes are read only when that tensor,
or a slice of it, is asked for. ``get_slice`` reads just the requested rows or columns, which is
what a tensor-parallel rank needs.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from worker.loader.checkpoint import BaseCheckpoint
from worker.loader.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

# Buffers some exporters write next to the weights; the model recomputes them.
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ModelLoadError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(path, "expected a JSON object")
    return data


def _weight_map(directory: str) -> dict[str, str]:
    """Tensor name -> shard file name."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(index_path, "has no weight_map")
        return {str(k): str(v) for k, v in weight_map.items()}
    shards = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not shards:
        raise ModelLoadError(
            directory, f"no *.safetensors files and no {INDEX_FILE} (only safetensors is supported)"
        )
    weight_map = {}
    for shard in shards:
        for name in _open_shard(os.path.join(directory, shard)).keys():  # noqa: SIM118 (not a dict)
            weight_map[name] = shard
    return weight_map


def _open_shard(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelLoadError(path, "safetensors shard not found")
    try:
        return safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(path, f"not a readable safetensors file ({exc})") from None


class HFCheckpoint(BaseCheckpoint):
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ModelLoadError(directory, "not a directory")
        super().__init__(directory, read_json(os.path.join(directory, CONFIG_FILE)))
        self._shards: dict[str, Any] = {}  # shard file name -> open safe_open handle

    @cached_property
    def _weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file; read on first use, so a bad config.json is reported first."""
        return {
            name: shard
            for name, shard in _weight_map(self.path).items()
            if not name.endswith(_SKIPPED_SUFFIXES)
        }

    def _shard_of(self, name: str) -> Any:
        shard = self._weight_map[name]
        if shard not in self._shards:
            handle = _open_shard(os.path.join(self.path, shard))
            self._shards[shard] = handle
        handle = self._shards[shard]
        if name not in handle.keys():  # noqa: SIM118 (not a dict)
            raise ModelLoadError(self._shard_path(name), f"lacks tensor {name} listed in {INDEX_FILE}")
        return handle

    def _shard_path(self, name: str) -> str:
        return os.path.join(self.path, self._weight_map[name])

    def tensor_names(self) -> list[str]:
        return list(self._weight_map)

    def get_tensor(self, name: str) -> torch.Tensor:
        try:
            return self._shard_of(name).get_tensor(name)
        except SafetensorError as exc:
            raise ModelLoadError(self._shard_path(name), f"tensor {name}: {exc}") from None

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        try:
            return tuple(self._shard_of(name).get_slice(name).get_shape())
        except SafetensorError as exc:
            raise ModelLoadError(self._shard_path(name), f"tensor {name}: {exc}") from None

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        try:
            view = self._shard_of(name).get_slice(name)
            index = tuple(slice(None) for _ in range(dim)) + (slice(start, stop),)
            return view[index]
        except SafetensorError as exc:
            raise ModelLoadError(self._shard_path(name), f"tensor {name}: {exc}") from None

    def close(self) -> None:
        self._shards = {}
