"""Tensor parallelism on CPU (gloo): a TP group gives the same greedy tokens as one process.

This process is rank 0 (scheduler, sampler); the other ranks are spawned processes. Logits are
compared through the engine's logprobs (log-softmax of the gathered logits) of the sampled token
and the top 3, to LOGPROB_ATOL: fp32 partial sums added in a different order (all-reduce), nothing
else differs.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import multiprocessing.queues
import os
import signal
import time

import pytest
import torch

from tests.worker.tp_models import tiny_model
from worker.engine.config import EngineConfig
from worker.engine.engine import Engine, RequestOutput
from worker.engine.sampling_params import SamplingParams
from worker.loader.settings import ModelSettings
from worker.model.parallel import SINGLE
from worker.parallel.models import CheckpointModel
from worker.parallel.rank import ModelFactory
from worker.parallel.tp_group import TensorParallelGroup

LOGPROB_ATOL = 1e-4
ENGINE = EngineConfig(page_size=4, num_pages=64, max_model_len=128, max_num_batched_tokens=16)


def record_death(deaths: list[tuple[int, int | None]]):  # type: ignore[no-untyped-def]
    return lambda rank, code: deaths.append((rank, code))


def run_engine(
    engine: Engine, prompts: list[list[int]], params: SamplingParams
) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.req_id, []).append(out)
    return outputs


def run_tp(
    world_size: int,
    make_model: ModelFactory,
    config: EngineConfig,
    prompts: list[list[int]],
    params: SamplingParams,
) -> dict[str, list[RequestOutput]]:
    deaths: list[tuple[int, int | None]] = []
    group = TensorParallelGroup.start(
        world_size, make_model, config, on_death=record_death(deaths), num_threads=1
    )
    try:
        engine = Engine(make_model(group.parallel), config, ())
        assert engine.model.num_kv_heads_per_rank == engine.kv_cache[0][0].shape[2]
        outputs = run_engine(engine, prompts, params)
    finally:
        codes = group.close()
    assert codes == {rank: 0 for rank in range(1, world_size)}
    assert deaths == []
    return outputs


def tokens(outputs: list[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.new_token_ids]


def prompts(n: int, vocab_size: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (k,), generator=g).tolist() for k in (3, 11, 6, 19)[:n]]


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["kv-split", "kv-replicated"])
def test_tp2_matches_tp1_on_a_tiny_model(num_kv_heads: int) -> None:
    make_model = functools.partial(tiny_model, num_heads=4, num_kv_heads=num_kv_heads)
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=3)
    batch = prompts(4, 251)
    expected = run_engine(Engine(make_model(SINGLE), ENGINE, ()), batch, params)
    got = run_tp(2, make_model, ENGINE, batch, params)
    for req_id, ref in expected.items():
        assert tokens(got[req_id]) == tokens(ref), req_id
        ref_lps = [lp for o in ref for lp in o.logprobs or []]
        got_lps = [lp for o in got[req_id] for lp in o.logprobs or []]
        for lp, ref_lp in zip(got_lps, ref_lps, strict=True):
            assert lp.logprob == pytest.approx(ref_lp.logprob, abs=LOGPROB_ATOL)
            assert [t for t, _ in lp.top] == [t for t, _ in ref_lp.top]
            assert [v for _, v in lp.top] == pytest.approx([v for _, v in ref_lp.top], abs=LOGPROB_ATOL)


def test_tp3_on_the_default_model_matches_tp1() -> None:
    """SmolLM2-135M: 9 query / 3 KV heads, so each of 3 ranks holds 3 query heads and 1 KV head.
    Each rank reads its rows of the bundled GGUF."""
    make_model = CheckpointModel(ModelSettings(path="default", dtype="float32", device="cpu"))
    config = EngineConfig(page_size=16, num_pages=16, max_model_len=256)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    batch = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365], [1, 504, 3458, 282, 4649, 314]]
    expected = run_engine(Engine(make_model(SINGLE), config, ()), batch, params)
    got = run_tp(3, make_model, config, batch, params)
    assert {k: tokens(v) for k, v in got.items()} == {k: tokens(v) for k, v in expected.items()}


def serve_forever(world_size: int, pids: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    """Rank 0 of a group that generates until the group breaks (default death handling: exit 1)."""
    torch.set_num_threads(1)
    make_model = functools.partial(tiny_model, num_heads=6, num_kv_heads=3)
    group = TensorParallelGroup.start(world_size, make_model, ENGINE, num_threads=1, timeout_s=60)
    engine = Engine(make_model(group.parallel), ENGINE, ())
    pids.put(group.rank_pids)
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    for i in itertools.count():
        engine.add_request(f"r{i}", [1, 2, 3], params)
        while engine.has_unfinished():
            engine.step()


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not reaped yet
    except FileNotFoundError:
        return True


def test_killing_one_rank_ends_the_group() -> None:
    context = multiprocessing.get_context("spawn")
    pids: multiprocessing.queues.Queue = context.Queue()  # type: ignore[type-arg]
    rank0 = context.Process(target=serve_forever, args=(3, pids))
    rank0.start()
    try:
        rank_pids = pids.get(timeout=120)
        time.sleep(0.5)  # let it run a few steps
        os.kill(rank_pids[1], signal.SIGKILL)
        rank0.join(timeout=60)
        assert rank0.exitcode == 1  # the worker process ends non-zero: its Redis messages stay pending
        deadline = time.monotonic() + 30
        while not is_gone(rank_pids[2]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert is_gone(rank_pids[2])  # the surviving rank left too
    finally:
        if rank0.is_alive():
            rank0.kill()
            rank0.join()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL TP=2 needs two GPUs")
def test_nccl_tp2_matches_tp1_on_cuda() -> None:
    """The same check over NCCL, one GPU per rank."""
    make_model = functools.partial(tiny_model, num_heads=4, num_kv_heads=2)
    config = EngineConfig(page_size=16, num_pages=64, max_model_len=128, device="cuda")
    params = SamplingParams(max_tokens=8, temperature=0.0)
    batch = prompts(4, 251)
    expected = run_engine(Engine(make_model(SINGLE), config, ()), batch, params)
    got = run_tp(2, make_model, config, batch, params)
    assert {k: tokens(v) for k, v in got.items()} == {k: tokens(v) for k, v in expected.items()}
