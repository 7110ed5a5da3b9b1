"""The CPU layout: core lists parsed and split, and the engine thread (not its caller) pinned."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest

from tests.worker.tiny_llama import make_engine, make_hf_model
from worker.engine.cpu_cores import (
    available_cores,
    parse_cores,
    pin_current_thread,
    refused_cores,
    split_cores,
)
from worker.engine.engine import Engine
from worker.engine.outputs import RequestOutput
from worker.engine.sampling_params import SamplingParams
from worker.engine.settings import EngineSettings
from worker.service.engine_loop import AddCommand, EngineLoop, EngineReport
from worker.service.prepare import PreparedRequest

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is Linux's")


def test_core_lists_parse_and_bad_ones_say_why() -> None:
    assert parse_cores("") == frozenset()
    assert parse_cores("1") == {1}
    assert parse_cores("0,2-4, 7") == {0, 2, 3, 4, 7}
    for bad in ("a", "3-1", "-2", "1-x"):
        with pytest.raises(ValueError, match="cpu cores"):
            parse_cores(bad)
    with pytest.raises(ValueError, match="cpu cores"):
        EngineSettings(cpu_cores="two")


def test_the_io_side_keeps_one_core_in_eight_and_the_engine_the_rest() -> None:
    assert split_cores(frozenset({0, 1})) == ({1}, {0})
    assert split_cores(frozenset(range(16))) == (set(range(2, 16)), {0, 1})
    assert split_cores(frozenset({3})) == ({3}, {3})  # one core: nothing to split


@linux_only
def test_pinning_moves_the_calling_thread_only() -> None:
    cores = available_cores()
    target = frozenset({min(cores)})
    seen: list[frozenset[int]] = []

    def pinned() -> None:
        pin_current_thread(target)
        seen.append(frozenset(os.sched_getaffinity(0)))

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    assert seen == [target]
    assert frozenset(os.sched_getaffinity(0)) == cores


class AffinityEngine:
    """An engine that records the cores each step ran on."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.cores_seen: queue.Queue[frozenset[int]] = queue.Queue()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def step(self) -> list[RequestOutput]:
        self.cores_seen.put(frozenset(os.sched_getaffinity(0)))
        return self._engine.step()


@linux_only
def test_the_engine_loop_steps_on_its_own_cores() -> None:
    engine = AffinityEngine(make_engine(make_hf_model()))
    target = frozenset({max(available_cores())})
    reports: queue.Queue[EngineReport] = queue.Queue()
    loop = EngineLoop(engine, reports.put, cpu_cores=target)
    loop.start()
    params = SamplingParams(max_tokens=2, ignore_eos=True, temperature=0)
    loop.submit(AddCommand(PreparedRequest("r", [1, 2, 3], params, 0, 0.0, ())))
    assert engine.cores_seen.get(timeout=60) == target
    loop.stop(timeout_s=10)
    assert frozenset(os.sched_getaffinity(0)) == available_cores()


def test_a_worker_given_cores_it_may_not_run_on_stops_at_start_and_says_which() -> None:
    env = {**os.environ, "BUSSTOP_ENGINE_CPU_CORES": "4096"}
    worker = [sys.executable, "-m", "worker"]
    done = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "BUSSTOP_ENGINE_CPU_CORES=4096: Invalid argument" in done.stderr


@linux_only
def test_a_thread_may_move_beyond_the_affinity_it_inherited() -> None:
    """busstop up starts its worker on the I/O cores; the worker must still reach the engine's."""
    cores = available_cores()
    seen: list[OSError | None] = []

    def narrowed() -> None:
        pin_current_thread(frozenset({min(cores)}))
        seen.append(refused_cores(cores))

    thread = threading.Thread(target=narrowed)
    thread.start()
    thread.join()
    assert seen == [None]
    assert refused_cores(frozenset({4096})) is not None


def test_the_worker_shortens_the_gil_switch_interval_for_its_step_thread() -> None:
    from worker.__main__ import build_engine
    from worker.loader import ModelSettings

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        build_engine(ModelSettings(kv_cache_bytes=8 * 1024 * 1024, dtype="float32"),
                     engine_settings=EngineSettings(gil_switch_interval_ms=0.25))
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(previous)
