"""Ranks 1..N-1: build this rank's part of the model and a runner for it, then run every step rank 0 sends."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch

from worker.engine.config import EngineConfig
from worker.engine.runner import ModelRunner
from worker.model.llama import LlamaForCausalLM
from worker.model.parallel import ParallelContext
from worker.parallel.group import GroupConfig, join_group, leave_group
from worker.parallel.step_channel import StepReceiver

log = logging.getLogger(__name__)

# Builds this rank's shard of the model; must pickle (a module-level function or a partial of one),
# because it travels to freshly spawned rank processes.
ModelFactory = Callable[[ParallelContext], LlamaForCausalLM]


def rank_engine_config(config: EngineConfig, group: GroupConfig, rank: int) -> EngineConfig:
    """The same engine settings on this rank's own device (so every rank sizes the same KV pages)."""
    return dataclasses.replace(config, device=str(group.rank_device(rank)))


def run_rank(
    rank: int,
    group: GroupConfig,
    make_model: ModelFactory,
    engine_config: EngineConfig,
    num_threads: int | None = None,
) -> None:
    """A rank process's whole life: join, load, follow rank 0's steps until it says stop."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    parallel = join_group(rank, group)
    try:
        # Only a runner: this rank's shard, its KV cache (this rank's heads) and the attention backend.
        # Rank 0's scheduler decides what runs.
        runner = ModelRunner.build(make_model(parallel), rank_engine_config(engine_config, group, rank))
        log.info("tensor-parallel rank %d/%d ready on %s", rank, group.world_size, runner.device)
        follow_steps(runner, StepReceiver(parallel, runner.device))
    finally:
        leave_group()


@torch.inference_mode()
def follow_steps(runner: ModelRunner, receiver: StepReceiver) -> int:
    """Run rank 0's steps through this rank's shard; returns how many ran."""
    num_steps = 0
    while (step := receiver.receive()) is not None:
        runner.backend.plan(step.metadata)
        hidden = runner.model(step.input_ids, step.metadata.positions, runner.backend, runner.kv_cache)
        if step.logits_rows.numel():
            runner.model.compute_logits(hidden[step.logits_rows])  # this rank's part of the gather
        num_steps += 1
    return num_steps
