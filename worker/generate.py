"""Try a model from the terminal: ``python -m worker.generate --prompt "What is the capital of France?"``.

Loads the model (the bundled SmolLM2 by default; see ModelSettings for BUSSTOP_MODEL_* variables),
applies its chat template, and streams the answer as it is generated. Load time and decode speed
go to stderr, so stdout is only the answer.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

import torch
from pydantic import ValidationError

from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.loader import LoadedModel, ModelLoadError, ModelSettings, load_model
from worker.tokenizer import IncrementalDetokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", help="a system message (default: the chat template's own)")
    parser.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    parser.add_argument("--model", help="'default', a .gguf file or an HF checkpoint directory")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    return parser.parse_args(argv)


def prompt_ids(loaded: LoadedModel, args: argparse.Namespace) -> list[int]:
    if args.raw:
        return loaded.tokenizer.encode(args.prompt)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    return loaded.tokenizer.apply_chat_template(messages)


def run(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("path", args.model), ("dtype", args.dtype)) if v is not None}
    settings = ModelSettings(**overrides)
    start = time.perf_counter()
    loaded = load_model(settings)
    load_s = time.perf_counter() - start
    engine = Engine(
        loaded.model,
        EngineConfig(
            max_model_len=loaded.max_model_len,
            kv_cache_bytes=settings.kv_cache_bytes,
            max_num_seqs=1,
            device=str(settings.torch_device()),
            dtype=settings.torch_dtype(),
        ),
        loaded.eos_token_ids,
    )
    ids = prompt_ids(loaded, args)
    if len(ids) >= loaded.max_model_len:
        raise ValueError(f"the prompt has {len(ids)} tokens; the context window is {loaded.max_model_len}")
    params = SamplingParams(
        max_tokens=min(args.max_tokens, loaded.max_model_len - len(ids)),
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    engine.add_request(uuid.uuid4().hex, ids, params)
    detok = IncrementalDetokenizer(loaded.tokenizer, ids, args.stop)
    num_tokens, first_token_at = 0, None
    while engine.has_unfinished() and not detok.finished_by_stop:
        for out in engine.step():
            first_token_at = first_token_at or time.perf_counter()
            num_tokens += len(out.new_token_ids)
            text = detok.push(out.new_token_ids)
            if out.finish_reason is not None:
                text += detok.flush()
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    decode_s = time.perf_counter() - (first_token_at or time.perf_counter())
    speed = f"{(num_tokens - 1) / decode_s:.1f} tokens/s" if num_tokens > 1 and decode_s > 0 else "n/a"
    print(
        f"[{loaded.name}: loaded in {load_s:.1f} s; {len(ids)} prompt tokens, "
        f"{num_tokens} generated, decode {speed}]",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        problems = "; ".join(
            f"BUSSTOP_MODEL_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid model settings: {problems}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a prompt or sampling parameters the engine cannot take
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
