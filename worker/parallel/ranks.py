"""Ranks 1..N-1 of a group as child processes of rank 0, watched so that one death ends the group.

A tensor-parallel group is only useful whole: when any rank dies, the others cannot finish a
step. So rank 0 watches its children and exits non-zero as soon as one dies (its Redis messages
stay pending, and live workers reclaim them), and every child exits when rank 0's process goes
away. Collectives with a dead peer fail (gloo: connection closed; NCCL: async error handling), so
no rank hangs in a step either.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PARENT_POLL_S = 0.5
DeathHandler = Callable[[int, int | None], None]  # (rank, exit code)


def exit_on_rank_death(rank: int, exitcode: int | None) -> None:
    """Rank 0's default: the group is broken, so this process ends at once, without cleanup that
    might block on a collective (the engine thread may be inside one)."""
    log.error("tensor-parallel rank %d exited with code %s; ending the group", rank, exitcode)
    logging.shutdown()
    os._exit(1)


def _rank_entry(target: Callable[..., Any], rank: int, args: tuple[Any, ...], parent_pid: int) -> None:
    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # rank 0 is gone: nothing can drive this rank any more

    threading.Thread(target=watch_parent, name="watch-rank0", daemon=True).start()
    # Rank 0 decides when the group stops (Ctrl-C reaches the whole process group; it must not
    # kill a rank in the middle of a collective while rank 0 drains).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        target(rank, *args)
    except BaseException:
        log.exception("tensor-parallel rank %d failed", rank)
        code = 1
    else:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: C++ destructors of torch.distributed's threads can abort the
    # process at exit even after a clean destroy_process_group, and a failed group cannot be torn
    # down cleanly at all.
    os._exit(code)


class RankProcesses:
    """Start ``target(rank, *args)`` for ranks 1..world_size-1 in fresh (spawned) processes."""

    def __init__(self, world_size: int, target: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        context = mp.get_context("spawn")  # no fork: the parent may hold threads and CUDA state
        self._processes = {
            rank: context.Process(
                target=_rank_entry,
                args=(target, rank, args, os.getpid()),
                name=f"tp-rank-{rank}",
                daemon=True,
            )
            for rank in range(1, world_size)
        }
        self._stopping = threading.Event()

    @property
    def pids(self) -> dict[int, int | None]:
        return {rank: process.pid for rank, process in self._processes.items()}

    def start(self, on_death: DeathHandler = exit_on_rank_death) -> None:
        """Start the ranks, and a watcher that calls ``on_death`` when one exits before ``stop``."""
        for process in self._processes.values():
            process.start()
        if self._processes:
            threading.Thread(target=self._watch, args=(on_death,), name="watch-ranks", daemon=True).start()

    def _watch(self, on_death: DeathHandler) -> None:
        by_sentinel = {process.sentinel: rank for rank, process in self._processes.items()}
        ready = multiprocessing.connection.wait(list(by_sentinel))
        if self._stopping.is_set():
            return
        rank = by_sentinel[ready[0]]  # type: ignore[index]
        process = self._processes[rank]
        process.join()
        on_death(rank, process.exitcode)

    def stop(self, timeout_s: float = 10.0) -> dict[int, int | None]:
        """Wait for the ranks to exit (after the group was told to stop); kill stragglers.
        Returns each rank's exit code."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes.values():
            if process.is_alive():
                process.kill()
                process.join()
        return {rank: process.exitcode for rank, process in self._processes.items()}
