"""Start the other ranks of a serving worker's TP group, before rank 0 loads its own shard."""

from __future__ import annotations

import logging

from worker.engine.config import EngineConfig
from worker.loader.settings import ModelSettings
from worker.parallel.models import CheckpointModel
from worker.parallel.settings import ParallelSettings
from worker.parallel.tp_group import TensorParallelGroup

log = logging.getLogger(__name__)


def follower_engine_config(settings: ModelSettings) -> EngineConfig:
    """What ranks 1..N-1 need to mirror rank 0's KV cache: the same page size, byte budget and
    dtype give the same number of pages. They never admit requests, so max_model_len is moot."""
    return EngineConfig(
        page_size=EngineConfig.page_size,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_model_len=1,
        device=str(settings.torch_device()),
        dtype=settings.torch_dtype(),
    )


def start_tensor_parallel(settings: ModelSettings, parallel: ParallelSettings) -> TensorParallelGroup | None:
    """The started group (rank 0 loads with ``group.parallel``), or None for a single-process worker."""
    if parallel.tensor_parallel_size == 1:
        return None
    log.info("starting %d tensor-parallel ranks", parallel.tensor_parallel_size)
    return TensorParallelGroup.start(
        parallel.tensor_parallel_size,
        CheckpointModel(settings),
        follower_engine_config(settings),
        timeout_s=parallel.collective_timeout_s,
    )
