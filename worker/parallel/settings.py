"""How many ranks a worker runs: ``--tensor-parallel-size N`` or BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE."""

from __future__ import annotations

import argparse

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ParallelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_WORKER_", extra="ignore")

    tensor_parallel_size: int = Field(default=1, ge=1)
    # A collective that waits longer than this fails (a rank hung); the group then ends.
    collective_timeout_s: float = Field(default=300.0, gt=0)


def parallel_settings(argv: list[str]) -> ParallelSettings:
    """The environment's settings, with ``--tensor-parallel-size`` from the command line on top."""
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="ranks (GPUs) in this worker")
    args = parser.parse_args(argv)
    overrides = {}
    if args.tensor_parallel_size is not None:
        overrides["tensor_parallel_size"] = args.tensor_parallel_size
    try:
        return ParallelSettings(**overrides)
    except ValidationError as e:
        parser.error(f"tensor-parallel settings: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
