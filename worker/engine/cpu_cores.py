"""Which CPU cores the engine's step thread runs on, and which the worker's I/O side keeps.

On a CPU the step is a handful of OpenMP matmuls and thousands of small ops. When the gateway, Redis,
intake or detokenizing run on a core the OpenMP team works on, the whole team waits at its next
barrier for the preempted thread, and a step that should take 30 ms takes 50. So the engine's thread
(and the OpenMP team it starts, whose threads inherit its affinity) gets cores of its own, and
everything else shares the rest. Linux only; elsewhere nothing is pinned.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where there is no cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def parse_cores(spec: str) -> frozenset[int]:
    """'1', '2-7' or '0,2-3' -> the core ids; '' -> none."""
    cores: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"cpu cores: {part!r} is neither a core id nor a range like 2-7") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"cpu cores: {part!r} is not a range of core ids")
        cores.update(range(lo, hi + 1))
    return frozenset(cores)


def format_cores(cores: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def available_cores() -> frozenset[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def split_cores(cores: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(engine cores, I/O cores): the I/O side keeps one core in eight (at least one) and the engine
    the rest; with a single core there is nothing to split and both get it."""
    ordered = sorted(cores)
    if len(ordered) < 2:
        return cores, cores
    io = frozenset(ordered[: max(1, len(ordered) // 8)])
    return cores - io, io


def pin_current_thread(cores: frozenset[int]) -> None:
    """Run the calling thread (and the threads it starts from now on) on ``cores`` only."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def refused_cores(cores: frozenset[int]) -> OSError | None:
    """Why the OS would not run a thread on ``cores`` (None: it would). Tried on a throwaway thread:
    a thread may move beyond the affinity it inherited (``busstop up`` starts workers on its I/O cores),
    only not beyond what the machine or its cpuset allows."""
    refused: list[OSError] = []

    def attempt() -> None:
        try:
            pin_current_thread(cores)
        except OSError as exc:
            refused.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return refused[0] if refused else None
