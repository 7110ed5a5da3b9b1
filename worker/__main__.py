"""``python -m worker``: load the model, then serve it from Redis until SIGTERM or SIGINT.

Settings come from the environment: ``BUSSTOP_WORKER_*`` (worker/service/settings.py),
``BUSSTOP_MODEL_*`` (worker/loader/settings.py) and ``BUSSTOP_ENGINE_*`` (worker/engine/settings.py).
A first signal stops intake and lets running requests finish within the grace period; a second one
ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import torch

from shared.redis_client import connect
from shared.telemetry.logs import configure_logging
from shared.telemetry.tracing import setup_tracing
from worker.engine.config import EngineConfig
from worker.engine.cpu_cores import available_cores, format_cores, pin_current_thread, refused_cores
from worker.engine.engine import Engine
from worker.engine.kv_cache import page_bytes
from worker.engine.settings import EngineSettings, get_engine_settings
from worker.loader import LoadedModel, ModelLoadError, ModelSettings, get_model_settings, load_model
from worker.model.parallel import SINGLE, ParallelContext
from worker.parallel.serving import start_tensor_parallel
from worker.parallel.settings import ParallelSettings, parallel_settings
from worker.service.metrics import WorkerMetrics, start_metrics_server
from worker.service.service import WorkerService
from worker.service.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("worker")


def build_engine(
    settings: ModelSettings, parallel: ParallelContext = SINGLE, engine_settings: EngineSettings | None = None
) -> tuple[Engine, LoadedModel, int]:
    """Load the model (rank 0's shard under TP) and build its engine.

    Returns (engine, loaded model, max_model_len served)."""
    engine_settings = engine_settings or get_engine_settings()
    num_threads = engine_settings.num_threads or len(engine_settings.engine_cores)
    if num_threads:
        torch.set_num_threads(num_threads)
    sys.setswitchinterval(engine_settings.gil_switch_interval_ms / 1000)
    loaded = load_model(settings, parallel)
    page_size = EngineConfig.page_size
    dtype = settings.torch_dtype()
    num_pages = settings.kv_cache_bytes // page_bytes(
        loaded.config.num_hidden_layers,
        page_size,
        loaded.model.num_kv_heads_per_rank,
        loaded.config.head_dim,
        dtype,
    )
    # A request may use the whole window, so one sequence of max_model_len tokens must fit the KV cache.
    max_model_len = min(loaded.max_model_len, num_pages * page_size)
    if max_model_len < loaded.max_model_len:
        if settings.max_model_len:
            raise ValueError(
                f"max_model_len {settings.max_model_len} does not fit the KV cache "
                f"({num_pages * page_size} tokens); raise BUSSTOP_MODEL_KV_CACHE_BYTES or lower"
                " BUSSTOP_MODEL_MAX_MODEL_LEN"
            )
        log.warning("serving a context window of %d tokens, what the KV cache holds", max_model_len)
    config = EngineConfig(
        page_size=page_size,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_model_len=max_model_len,
        max_num_seqs=engine_settings.max_num_seqs,
        max_num_batched_tokens=engine_settings.max_num_batched_tokens,
        enable_prefix_caching=engine_settings.enable_prefix_caching,
        attention_backend=engine_settings.attention_backend,
        device=str(settings.torch_device()),
        dtype=dtype,
        slo=engine_settings.slo,
    )
    return Engine(loaded.model, config, loaded.eos_token_ids), loaded, max_model_len


async def serve(
    settings: WorkerSettings, model_settings: ModelSettings, parallel: ParallelSettings | None = None
) -> int:
    engine_cores = get_engine_settings().engine_cores
    if engine_cores and (io_cores := available_cores() - engine_cores):
        pin_current_thread(io_cores)  # the threads started from here on (executor, heartbeat) too
    # A TP worker: ranks 1..N-1 start first; a rank that dies later ends this process (exit 1).
    group = await asyncio.to_thread(start_tensor_parallel, model_settings, parallel or ParallelSettings())
    engine, loaded, max_model_len = await asyncio.to_thread(
        build_engine, model_settings, group.parallel if group else SINGLE
    )
    # Only now: a scrapeable /metrics port is what the Kubernetes probes take for "model loaded".
    start_metrics_server(settings.metrics_port)
    # The longest blocking read is an intake XREADGROUP or a control XREAD.
    redis = connect(
        settings.redis_url,
        settings.redis_timeout_s,
        max(settings.intake_block_ms, 1000) / 1000,
        settings.redis_cluster,
    )
    service = WorkerService(
        settings,
        redis,
        model_name=loaded.name,
        engine=engine,
        tokenizer=loaded.tokenizer,
        max_model_len=max_model_len,
        vocab_size=loaded.config.vocab_size,
        metrics=WorkerMetrics(loaded.name),
        tensor_parallel_size=group.parallel.world_size if group else 1,
        engine_cores=engine_cores,
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, lambda: service.stop(force=service.is_stopping))
    try:
        await service.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await redis.aclose()
        if group is not None:
            await asyncio.to_thread(group.close)
    return 1 if service.failed else 0


def main() -> int:
    settings = get_worker_settings()
    configure_logging()  # BUSSTOP_LOG_LEVEL, BUSSTOP_LOG_FORMAT
    setup_tracing("busstop-worker")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    engine_cores = get_engine_settings().engine_cores
    if engine_cores and (why := refused_cores(engine_cores)):  # else the step thread dies on them
        cores = format_cores(engine_cores)
        print(f"error: BUSSTOP_ENGINE_CPU_CORES={cores}: {why.strerror}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(serve(settings, get_model_settings(), parallel_settings(sys.argv[1:])))
    except ModelLoadError as exc:  # one line naming the file, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
