"""A checkpoint on disk seen as HF-named tensors, read one at a time.

Both formats (GGUF, HF safetensors) present the same face so that model code only knows HF names,
and a tensor-parallel rank can read just its slice of each tensor instead of the whole model.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch


class BaseCheckpoint(ABC):
    def __init__(self, path: str | os.PathLike[str], hf_config: dict[str, Any]) -> None:
        self.path = os.fspath(path)
        self.hf_config = hf_config  # config.json's dict (for GGUF: built from the metadata)

    @abstractmethod
    def tensor_names(self) -> list[str]:
        """Every weight's HF name, in file order."""

    @abstractmethod
    def get_tensor(self, name: str) -> torch.Tensor:
        """The full tensor, float32 or the file's float dtype, on CPU."""

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape; formats that know it without reading the data override this."""
        return tuple(self.get_tensor(name).shape)

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows/columns [start, stop) of ``dim``; formats that can read a slice alone override this."""
        return self.get_tensor(name).narrow(dim, start, stop - start)

    def weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor in ``dtype``), one at a time, so that peak memory stays at one tensor."""
        for name in self.tensor_names():
            yield name, self.get_tensor(name).to(dtype)

    @abstractmethod
    def close(self) -> None:
        """Release file handles and maps."""
