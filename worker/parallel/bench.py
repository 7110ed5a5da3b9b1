"""Decode throughput of one worker's engine at a TP size: ``python -m worker.parallel.bench --tp 2``.

Runs ``--num-requests`` greedy requests of ``--prompt-len`` random prompt tokens and ``--max-tokens``
output tokens each, all admitted at once, and prints one JSON line: output tokens per second from
the first step to the last (model loading excluded). Compare TP sizes on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.loader.settings import ModelSettings
from worker.model.parallel import SINGLE
from worker.parallel.models import CheckpointModel
from worker.parallel.tp_group import TensorParallelGroup


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    torch.set_num_threads(args.threads_per_rank)
    settings = ModelSettings(path=args.model_path, dtype=args.dtype, device=args.device)
    make_model = CheckpointModel(settings)
    config = EngineConfig(
        kv_cache_bytes=args.kv_cache_mib * 1024 * 1024,
        max_model_len=args.prompt_len + args.max_tokens + 1,
        max_num_seqs=args.num_requests,
        max_num_batched_tokens=max(2048, args.num_requests * args.prompt_len),
        device=str(settings.torch_device()),
        dtype=settings.torch_dtype(),
    )
    group = None
    if args.tp > 1:
        group = TensorParallelGroup.start(args.tp, make_model, config, num_threads=args.threads_per_rank)
    try:
        engine = Engine(make_model(group.parallel if group else SINGLE), config, ())
        vocab_size = engine.model_config.vocab_size
        g = torch.Generator().manual_seed(0)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        for i in range(args.num_requests):
            prompt = torch.randint(0, vocab_size, (args.prompt_len,), generator=g).tolist()
            engine.add_request(f"bench-{i}", prompt, params)
        num_tokens = 0
        start = time.perf_counter()
        while engine.has_unfinished():
            num_tokens += sum(len(out.new_token_ids) for out in engine.step())
        elapsed = time.perf_counter() - start
    finally:
        if group is not None:
            group.close()
    return {
        "model": args.model_path,
        "tp": args.tp,
        "device": config.device,
        "threads_per_rank": args.threads_per_rank,
        "num_requests": args.num_requests,
        "output_tokens": num_tokens,
        "seconds": round(elapsed, 3),
        "output_tokens_per_s": round(num_tokens / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.parallel.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-path", default="default", help="as BUSSTOP_MODEL_PATH (default: SmolLM2)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-requests", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    print(json.dumps(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
