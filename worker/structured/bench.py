"""What constrained decoding costs a decode step: the same batch with and without a JSON grammar.

    python -m worker.structured.bench                  # bundled SmolLM2, bfloat16, batch 1, 16, 64

Every request is a chat prompt; the constrained run holds each one to a JSON schema that cannot end
early (an array of at least 50 records), so every measured step computes every row's mask. The step
time is the median of the decode steps after the prompts, on the engine alone (no Redis, no gateway).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.loader import LoadedModel, ModelSettings, load_model
from worker.structured.grammar import GrammarCompiler

RECORD = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                   "city": {"type": "string", "maxLength": 20}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": RECORD, "minItems": 50, "x-guidance": {"whitespace_flexible": False}}
GRAMMAR = "start: %json " + json.dumps(SCHEMA)
PROMPT = "List fifty people with their name, age and city as JSON."


def decode_step_s(loaded: LoadedModel, grammars: GrammarCompiler | None, batch: int, num_steps: int,
                  dtype: torch.dtype) -> float:
    """The median decode step time of ``batch`` requests, constrained when ``grammars`` is given."""
    engine = Engine(loaded.model, EngineConfig(max_model_len=1024, max_num_seqs=batch, dtype=dtype,
                                               kv_cache_bytes=512 * 1024 * 1024), loaded.eos_token_ids)
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    params = SamplingParams(max_tokens=num_steps + 8, temperature=0, ignore_eos=grammars is None)
    for i in range(batch):
        constraint = grammars.compile(GRAMMAR) if grammars is not None else None
        engine.add_request(f"r{i}", ids, params, constraint=constraint)
    while engine.stats().num_waiting or not engine.stats().num_running:  # the prompts
        engine.step()
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        outputs = engine.step()
        times.append(time.perf_counter() - start)
        if any(o.finish_reason not in (None, "length") for o in outputs):
            raise RuntimeError(f"a request ended early: {[o for o in outputs if o.finish_reason]}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.structured.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, nargs="+", default=(1, 16, 64))
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    loaded = load_model(ModelSettings(path=args.model, dtype=args.dtype, max_model_len=1024))
    grammars = GrammarCompiler(loaded.tokenizer.hf, loaded.config.vocab_size)
    start = time.perf_counter()
    grammars.compile(GRAMMAR)
    print(f"model: {loaded.name}, {args.dtype}, {torch.get_num_threads()} threads; first compile of the "
          f"grammar (with the vocabulary): {1000 * (time.perf_counter() - start):.0f} ms")
    decode_step_s(loaded, None, 1, 4, dtype)  # warm-up
    print(f"{'batch':>5}  {'free step':>10}  {'constrained':>11}  {'cost':>6}")
    for batch in args.batch:
        free = decode_step_s(loaded, None, batch, args.steps, dtype)
        constrained = decode_step_s(loaded, grammars, batch, args.steps, dtype)
        print(f"{batch:5d}  {1000 * free:8.1f} ms  {1000 * constrained:9.1f} ms  "
              f"{100 * (constrained / free - 1):+5.1f}%")


if __name__ == "__main__":
    main()
