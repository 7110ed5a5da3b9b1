"""Run several tensor-parallel groups on one machine: ``python -m worker.parallel.node``.

Each group is one ordinary worker process (``python -m worker``) with TP size N that sees only
its own GPUs through CUDA_VISIBLE_DEVICES, so 8 GPUs with N=2 are 4 workers (4 Redis consumers).
A group that exits non-zero (one of its ranks died) is restarted after a pause; its requests were
left pending in Redis and live workers reclaim them meanwhile. SIGTERM/SIGINT are passed to every
group, and the launcher exits once all have.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

TP_ENV = "BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE"
POLL_S = 0.5


def assign_devices(devices: Sequence[str], tensor_parallel_size: int) -> list[list[str]]:
    """Consecutive devices per group (neighbours usually share the fastest links)."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor-parallel size must be >= 1, got {tensor_parallel_size}")
    if not devices or len(devices) % tensor_parallel_size:
        raise ValueError(f"{len(devices)} devices do not split into groups of {tensor_parallel_size}")
    n = tensor_parallel_size
    return [list(devices[i : i + n]) for i in range(0, len(devices), n)]


def group_env(devices: Sequence[str], tensor_parallel_size: int) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    env[TP_ENV] = str(tensor_parallel_size)
    return env


class NodeLauncher:
    def __init__(
        self,
        groups: list[list[str]],
        tensor_parallel_size: int,
        command: Sequence[str],
        restart_delay_s: float,
    ) -> None:
        self._groups = groups
        self._tp = tensor_parallel_size
        self._command = list(command)
        self._restart_delay_s = restart_delay_s
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _start(self, index: int) -> None:
        devices = self._groups[index]
        self._processes[index] = subprocess.Popen(self._command, env=group_env(devices, self._tp))
        log.info("group %d on devices %s: pid %d", index, ",".join(devices), self._processes[index].pid)

    def stop(self, *_: object) -> None:
        self._stopping = True
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for index in range(len(self._groups)):
            self._start(index)
        restart_at: dict[int, float] = {}
        while True:
            time.sleep(POLL_S)
            if self._stopping:
                if all(p.poll() is not None for p in self._processes.values()):
                    return 0
                continue
            for index, process in self._processes.items():
                code = process.poll()
                if code is None or index in restart_at:
                    continue
                log.error(
                    "group %d exited with code %d; restarting in %.0f s", index, code, self._restart_delay_s
                )
                restart_at[index] = time.monotonic() + self._restart_delay_s
            for index, when in list(restart_at.items()):
                if time.monotonic() >= when:
                    del restart_at[index]
                    self._start(index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.parallel.node", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tensor-parallel-size", type=int, required=True)
    parser.add_argument(
        "--devices", default=None, help="comma-separated GPU ids (default: every visible GPU)"
    )
    parser.add_argument("--restart-delay-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.devices:
        devices = args.devices.split(",")
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    try:
        groups = assign_devices(devices, args.tensor_parallel_size)
    except ValueError as e:
        parser.error(str(e))
    launcher = NodeLauncher(
        groups, args.tensor_parallel_size, [sys.executable, "-m", "worker"], args.restart_delay_s
    )
    signal.signal(signal.SIGTERM, launcher.stop)
    signal.signal(signal.SIGINT, launcher.stop)
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
