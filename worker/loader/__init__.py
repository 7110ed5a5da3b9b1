"""Model loading: the bundled SmolLM2 GGUF, other GGUF files and Hugging Face checkpoint directories."""

from worker.loader.errors import ModelLoadError
from worker.loader.load import LoadedModel, load_model
from worker.loader.settings import ModelSettings, get_model_settings

__all__ = ["LoadedModel", "ModelLoadError", "ModelSettings", "get_model_settings", "load_model"]
