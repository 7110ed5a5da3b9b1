"""Joining a tensor-parallel group: one process per rank, one torch.distributed group among them.

gloo on CPU, NCCL on CUDA. With CUDA, rank r uses the r-th visible device, so a node launcher
places each group on its GPUs with CUDA_VISIBLE_DEVICES and every group sees devices 0..N-1.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from worker.model.parallel import ParallelContext


@dataclass(frozen=True)
class GroupConfig:
    world_size: int
    init_method: str  # "tcp://host:port" of rank 0's rendezvous
    device: str = "cpu"  # "cpu" or "cuda"
    timeout_s: float = 300.0  # a collective that waits longer than this fails instead of hanging

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"tensor-parallel size must be >= 1, got {self.world_size}")
        if torch.device(self.device).type not in ("cpu", "cuda"):
            raise ValueError(f"tensor parallelism runs on cpu or cuda, not {self.device!r}")

    @property
    def backend(self) -> str:
        return "nccl" if torch.device(self.device).type == "cuda" else "gloo"

    def rank_device(self, rank: int) -> torch.device:
        if torch.device(self.device).type == "cuda":
            return torch.device("cuda", rank)
        return torch.device("cpu")


def local_group_config(world_size: int, device: str = "cpu", timeout_s: float = 300.0) -> GroupConfig:
    """A group whose ranks all run on this machine, meeting on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return GroupConfig(world_size, f"tcp://127.0.0.1:{port}", device, timeout_s)


def join_group(rank: int, config: GroupConfig) -> ParallelContext:
    """Block until every rank has joined; the returned context carries this rank's collectives."""
    if config.world_size == 1:
        return ParallelContext()
    device = config.rank_device(rank)
    if device.type == "cuda":
        # Fail a collective whose peer died instead of waiting for it forever.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=config.backend,
        init_method=config.init_method,
        rank=rank,
        world_size=config.world_size,
        timeout=datetime.timedelta(seconds=config.timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    return ParallelContext(rank=rank, world_size=config.world_size, group=dist.group.WORLD)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
