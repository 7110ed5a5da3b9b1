"""``python -m worker``: load the model, then serve it from Redis until SIGTERM or SIGINT.

Settings come from the environment: ``BUSSTOP_WORKER_*`` (worker/service/settings.py) and
``BUSSTOP_MODEL_*`` (worker/loader/settings.py). A first signal stops intake and lets running
requests finish within the grace period; a second one ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from redis.asyncio import Redis

from shared.telemetry.logs import configure_logging
from shared.telemetry.worker_metrics import WorkerMetrics, start_metrics_server
from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.loader import LoadedModel, ModelSettings, get_model_settings, load_model
from worker.service.service import WorkerService
from worker.service.settings import WorkerSettings, get_worker_settings

log = logging.getLogger("worker")


def build_engine(settings: ModelSettings) -> tuple[Engine, LoadedModel]:
    loaded = load_model(settings)
    config = EngineConfig(
        kv_cache_bytes=settings.kv_cache_bytes,
        max_model_len=loaded.max_model_len,
        device=str(settings.torch_device()),
        dtype=settings.torch_dtype(),
    )
    return Engine(loaded.model, config, loaded.eos_token_ids), loaded


async def serve(settings: WorkerSettings, model_settings: ModelSettings) -> int:
    engine, loaded = await asyncio.to_thread(build_engine, model_settings)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    service = WorkerService(
        settings,
        redis,
        model_name=loaded.name,
        engine=engine,
        tokenizer=loaded.tokenizer,
        max_model_len=loaded.max_model_len,
        vocab_size=loaded.config.vocab_size,
        metrics=WorkerMetrics(loaded.name),
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
    return 1 if service.failed else 0


def main() -> int:
    settings = get_worker_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    start_metrics_server(settings.metrics_port)
    return asyncio.run(serve(settings, get_model_settings()))


if __name__ == "__main__":
    sys.exit(main())
