"""Continuous vs static batching vs no KV cache, same engine, model and workload.

    python -m worker.bench                 # random weights, SmolLM2-135M's shape (no download)
    python -m worker.bench --model default # the bundled SmolLM2 GGUF, through worker.loader
    python -m worker.bench --steps-only    # only the decode step against its linear floor

All requests arrive at once with varied prompt and output lengths (EOS ignored, so output lengths are
exactly as drawn); then the decode step at batch 1, 16 and 64 against its linear floor (step_bench).
continuous: the engine admits a request whenever a slot frees up. static: the next
batch of max_num_seqs requests is admitted only when the previous batch has finished. no-kv: continuous,
but every sequence's K/V is dropped after each step so every step recomputes the whole sequence.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM
from worker.step_bench import print_step_timings, step_timings

SMOLLM2_135M = ModelConfig(
    architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
    rope_theta=100000.0, rope_scaling=None, max_position_embeddings=8192, tie_word_embeddings=True,
    attention_bias=False,
)


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    max_tokens: int


@dataclass(frozen=True)
class Result:
    mode: str
    num_output_tokens: int
    elapsed_s: float
    cpu_s: float  # this process's CPU time: steadier than wall time on a shared machine
    num_steps: int
    num_requests: int

    @property
    def tokens_per_s(self) -> float:
        return self.num_output_tokens / self.elapsed_s

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.num_output_tokens / self.cpu_s


def make_workload(n: int, vocab_size: int, prompt_len: tuple[int, int], output_len: tuple[int, int],
                  output_dist: str, seed: int) -> list[Request]:
    """Uniform prompt lengths; output lengths uniform, or exponential (many short answers, a few long
    ones, like chat) with mean min + (max - min) / 4, clipped at max."""
    rng = random.Random(seed)
    lo, hi = output_len

    def output_tokens() -> int:
        if output_dist == "uniform":
            return rng.randint(lo, hi)
        return min(hi, lo + int(rng.expovariate(4 / (hi - lo))))

    return [Request([rng.randrange(vocab_size) for _ in range(rng.randint(*prompt_len))], output_tokens())
            for _ in range(n)]


def random_model(config: ModelConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model


def _params(request: Request) -> SamplingParams:
    return SamplingParams(max_tokens=request.max_tokens, temperature=0.0, ignore_eos=True)


def _drop_kv(engine: Engine) -> None:
    """Forget every running sequence's K/V, so the next step recomputes it from scratch."""
    for seq in engine.scheduler.running:
        engine.block_manager.free(seq)
        seq.num_computed_tokens = 0


def run(engine: Engine, workload: list[Request], mode: str, max_s: float) -> Result:
    """Serve the workload in the given mode; stops early (and says so) after max_s seconds."""
    batch_size = engine.config.max_num_seqs
    queue = list(enumerate(workload))
    after_step: Callable[[Engine], None] = _drop_kv if mode == "no-kv" else (lambda e: None)
    num_tokens = num_steps = num_finished = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while queue or engine.has_unfinished():
        if queue and (mode != "static" or not engine.has_unfinished()):
            take = len(queue) if mode != "static" else batch_size
            for i, request in queue[:take]:
                engine.add_request(f"{mode}-{i}", request.prompt_token_ids, _params(request))
            queue = queue[take:]
        for out in engine.step():
            num_tokens += len(out.new_token_ids)
            num_finished += out.finish_reason is not None
        after_step(engine)
        num_steps += 1
        if time.perf_counter() - start > max_s:
            break
    return Result(mode, num_tokens, time.perf_counter() - start, time.process_time() - cpu_start, num_steps,
                  num_finished)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random", help='"random" (SmolLM2-135M shape) or a loader path')
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=(16, 64), metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=(8, 128), metavar=("MIN", "MAX"))
    parser.add_argument("--output-dist", default="uniform", choices=("uniform", "exponential"))
    parser.add_argument("--no-kv-max-s", type=float, default=60.0,
                        help="time cap for the no-kv mode (it flatters no-kv: its later steps are slower)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-only", action="store_true",
                        help="only the decode step at batch 1, 16 and 64 against its linear floor")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model == "random":
        model, name = random_model(SMOLLM2_135M, args.seed), "random SmolLM2-135M-shaped"
    else:
        from worker.loader import ModelSettings, load_model

        loaded = load_model(ModelSettings(path=args.model))
        model, name = loaded.model, loaded.name
    config = EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=1024, device=args.device,
                          dtype=getattr(torch, args.dtype), max_num_batched_tokens=4096,
                          enable_prefix_caching=False)
    workload = make_workload(args.num_requests, model.config.vocab_size, tuple(args.prompt_len),
                             tuple(args.output_len), args.output_dist, args.seed)
    print(f"model: {name}; {len(workload)} requests, prompts {args.prompt_len[0]}-{args.prompt_len[1]}, "
          f"outputs {args.output_len[0]}-{args.output_len[1]} tokens ({args.output_dist}); "
          f"max_num_seqs {args.max_num_seqs}; {torch.get_num_threads()} threads; {args.device}, {args.dtype}")
    if not args.steps_only:
        compare_batching(model, config, workload, args.no_kv_max_s)
    step_config = dataclasses.replace(config, max_num_seqs=64, max_model_len=256)
    print_step_timings(step_timings(model, step_config))


def compare_batching(model: LlamaForCausalLM, config: EngineConfig, workload: list[Request],
                     no_kv_max_s: float) -> None:
    run(Engine(model, config, ()), workload[:2], "continuous", float("inf"))  # warm-up

    results = {}
    for mode in ("continuous", "static", "no-kv"):
        max_s = no_kv_max_s if mode == "no-kv" else float("inf")
        r = results[mode] = run(Engine(model, config, ()), workload, mode, max_s)
        partial = "" if r.num_requests == len(workload) else f" (stopped after {r.elapsed_s:.0f} s)"
        print(f"{mode:>10}: {r.tokens_per_s:8.1f} output tok/s  {r.tokens_per_cpu_s:8.1f} tok/CPU-s  "
              f"{r.num_output_tokens:6d} tokens  {r.elapsed_s:7.2f} s  {r.num_steps:5d} steps{partial}")
    cont = results["continuous"]
    for other in ("static", "no-kv"):
        r = results[other]
        print(f"continuous / {other + ':':8} {cont.tokens_per_s / r.tokens_per_s:6.2f}x wall  "
              f"{cont.tokens_per_cpu_s / r.tokens_per_cpu_s:6.2f}x CPU time")


if __name__ == "__main__":
    main()
