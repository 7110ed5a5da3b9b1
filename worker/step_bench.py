"""The engine's decode step against its linear floor: how far the step is from its matmuls alone.

The floor is the same model's linear layers (every layer's qkv, o, gate_up and down projections,
then the LM head on each sequence's row) run back to back on random activations of the batch's
shape, in the same process, dtype and thread count as the step they are compared with, through the
same function the layers call (``worker.kernels.linear``: the small-batch bf16 kernel where it
serves, else ``F.linear``). A step can not beat it on this kernel choice; what lies above it is
attention, the small ops and Python.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.kernels.linear import linear
from worker.model.llama import LlamaDecoderLayer, LlamaForCausalLM


@dataclass(frozen=True)
class StepTiming:
    batch: int
    step_ms: float  # median engine decode step
    floor_ms: float  # median of the model's matmuls alone at the same batch

    @property
    def ratio(self) -> float:
        return self.step_ms / self.floor_ms


def _timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def linear_weights(model: LlamaForCausalLM) -> list[torch.Tensor]:
    """Every matmul weight a decode step multiplies by, in the order the step does, LM head last."""
    weights: list[torch.Tensor] = []
    for module in model.model.layers:
        layer = cast(LlamaDecoderLayer, module)
        attn, mlp = layer.self_attn, layer.mlp
        weights += [attn.qkv_proj.weight, attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight]
    return weights + [model.lm_head.weight]


def linear_floor(model: LlamaForCausalLM, batch: int) -> Callable[[], None]:
    """One pass over the model's matmuls at ``batch`` rows, on random activations."""
    weights = linear_weights(model)
    inputs = [torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]

    @torch.inference_mode()
    def matmuls() -> None:
        for x, w in zip(inputs, weights, strict=True):
            linear(x, w)

    return matmuls


def decoding_engine(model: LlamaForCausalLM, config: EngineConfig, batch: int, reps: int,
                    prompt_len: int = 64) -> Engine:
    """An engine with ``batch`` sequences all decoding (prefills done), enough tokens left for ``reps``."""
    engine = Engine(model, config, ())
    vocab = model.config.vocab_size
    params = SamplingParams(max_tokens=reps + 8, temperature=0.0, ignore_eos=True)
    generator = torch.Generator().manual_seed(batch)
    for i in range(batch):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=generator).tolist()
        engine.add_request(f"step-{i}", prompt, params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or \
            engine.scheduler.waiting:
        engine.step()
    engine.step()
    return engine


def step_timing(model: LlamaForCausalLM, config: EngineConfig, batch: int, reps: int = 30) -> StepTiming:
    """Medians of ``reps`` decode steps and ``reps`` floor passes, taken in turns: a machine whose
    speed drifts (shared cores) moves both alike, so their ratio holds where each figure alone moves."""
    engine = decoding_engine(model, config, batch, reps)
    floor = linear_floor(model, batch)
    floor()
    steps, floors = [], []
    for _ in range(reps):
        steps.append(_timed_ms(engine.step))
        floors.append(_timed_ms(floor))
    return StepTiming(batch, statistics.median(steps), statistics.median(floors))


def step_timings(model: LlamaForCausalLM, config: EngineConfig, batches: tuple[int, ...] = (1, 16, 64)
                 ) -> list[StepTiming]:
    """Each batch's step and floor (the engine moves the model to ``config``'s dtype first)."""
    return [step_timing(model, config, b) for b in batches if b <= config.max_num_seqs]


def print_step_timings(timings: list[StepTiming]) -> None:
    print("decode step vs the linear floor (the same matmuls alone):")
    for t in timings:
        print(f"  batch {t.batch:3d}: step {t.step_ms:7.2f} ms  floor {t.floor_ms:7.2f} ms  "
              f"{t.ratio:5.2f}x the floor  {t.batch / t.step_ms * 1e3:8.1f} tok/s")
