"""The model factory a served checkpoint gives every rank: the model alone, this rank's slices."""

from __future__ import annotations

from dataclasses import dataclass

from worker.loader.load import build_model, model_config, open_checkpoint, resolve_path
from worker.loader.settings import ModelSettings
from worker.model.llama import LlamaForCausalLM
from worker.model.parallel import ParallelContext
from worker.parallel.shard_weights import rank_weights


@dataclass(frozen=True)
class CheckpointModel:
    """``ModelFactory`` for ranks 1..N-1: no tokenizer, weights read as this rank's slices."""

    settings: ModelSettings

    def __call__(self, parallel: ParallelContext) -> LlamaForCausalLM:
        checkpoint, config_path = open_checkpoint(resolve_path(self.settings.path))
        try:
            dtype = self.settings.torch_dtype()
            weights = (
                checkpoint.weights(dtype) if parallel.world_size == 1 else rank_weights(checkpoint, dtype)
            )
            return build_model(
                model_config(checkpoint, config_path), weights, self.settings.torch_device(), dtype, parallel
            )
        finally:
            checkpoint.close()
