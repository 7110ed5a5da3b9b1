"""Rank 0's handle on a tensor-parallel group: start the other ranks, join them, stop them.

One group is one worker: rank 0 runs the worker service, the scheduler, the sampler and Redis I/O,
and the model it builds with ``group.parallel`` sends every step to the other ranks.

    group = TensorParallelGroup.start(2, make_model, engine_config)
    engine = Engine(make_model(group.parallel), engine_config, eos_token_ids)
    ...  # engine.step() as usual
    group.close()
"""

from __future__ import annotations

import dataclasses

import torch

from worker.engine.config import EngineConfig
from worker.model.parallel import ParallelContext
from worker.parallel.group import GroupConfig, join_group, leave_group, local_group_config
from worker.parallel.rank import ModelFactory, run_rank
from worker.parallel.ranks import DeathHandler, RankProcesses, exit_on_rank_death
from worker.parallel.step_channel import StepSender


class TensorParallelGroup:
    def __init__(
        self, group: GroupConfig, parallel: ParallelContext, sender: StepSender | None, ranks: RankProcesses
    ) -> None:
        self.group = group
        self.parallel = parallel  # rank 0's context, step sender installed
        self._sender = sender
        self._ranks = ranks
        self._closed = False

    @classmethod
    def start(
        cls,
        world_size: int,
        make_model: ModelFactory,
        engine_config: EngineConfig,
        *,
        on_death: DeathHandler = exit_on_rank_death,
        num_threads: int | None = None,
        timeout_s: float = 300.0,
    ) -> TensorParallelGroup:
        """Spawn ranks 1..N-1 and join the group as rank 0 (blocks until all have joined).

        ``on_death(rank, exit_code)`` runs when a rank dies before ``close``; the default ends this
        process with status 1, which is what a worker must do (see ranks.py).
        """
        group = local_group_config(world_size, torch.device(engine_config.device).type, timeout_s)
        ranks = RankProcesses(world_size, run_rank, (group, make_model, engine_config, num_threads))
        ranks.start(on_death)
        parallel = join_group(0, group)
        sender = None
        if world_size > 1:
            sender = StepSender(parallel, group.rank_device(0))
            parallel = dataclasses.replace(parallel, step_sender=sender)
        return cls(group, parallel, sender, ranks)

    @property
    def rank_pids(self) -> dict[int, int | None]:
        return self._ranks.pids

    def close(self, timeout_s: float = 30.0) -> dict[int, int | None]:
        """Stop the other ranks and leave the group; returns their exit codes."""
        if self._closed:
            return {}
        self._closed = True
        if self._sender is not None:
            self._sender.stop()
        codes = self._ranks.stop(timeout_s)
        leave_group()
        return codes
