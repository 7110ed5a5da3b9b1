"""`busstop plan`: print what a model needs on a GPU at each tensor-parallel degree."""

from __future__ import annotations

import argparse

from worker.planner.gpus import GIB, GPUS, get_gpu
from worker.planner.plan import (
    ModelShape,
    Plan,
    PlanConfig,
    canonical_dtype,
    dtype_bytes,
    gib,
    plan_tp,
    smallest_fitting_tp,
    valid_tp_sizes,
)
from worker.planner.presets import PRESETS, resolve_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help=f"a config.json, a model dir, or a preset: {', '.join(PRESETS)}"
    )
    parser.add_argument("--gpu", required=True, help=f"one of: {', '.join(g.name for g in GPUS.values())}")
    parser.add_argument(
        "--tp", type=int, default=None, help="tensor-parallel size to plan (default: every valid one)"
    )
    parser.add_argument(
        "--dtype", default=None, help="weight dtype: bfloat16, float16, float32, fp8 (default: config's)"
    )
    parser.add_argument("--kv-dtype", default=None, help="KV cache dtype (default: the weight dtype)")
    parser.add_argument(
        "--context-len", type=int, default=None, help="tokens per sequence (default: the model's max)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument(
        "--runtime-reserve-gib", type=float, default=1.0, help="CUDA graphs, NCCL/cuBLAS workspaces"
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--max-tp", type=int, default=8, help="largest TP degree to consider (GPUs per node)")


def run(args: argparse.Namespace) -> int:
    """Print the plan; exit status 0 when the model fits (at --tp, or at some TP <= --max-tp), else 1."""
    name, hf_config = resolve_model(args.model)
    shape = ModelShape.from_hf_config(hf_config)
    gpu = get_gpu(args.gpu)
    dtype = canonical_dtype(args.dtype or str(hf_config.get("torch_dtype") or "bfloat16"))
    kv_dtype = canonical_dtype(args.kv_dtype or dtype)
    cfg = PlanConfig(
        weight_bytes=dtype_bytes(dtype),
        kv_bytes=dtype_bytes(kv_dtype),
        context_len=args.context_len or shape.max_position_embeddings,
        gpu_memory_utilization=args.gpu_memory_utilization,
        runtime_reserve_bytes=int(args.runtime_reserve_gib * GIB),
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        page_size=args.page_size,
    )
    tps = [args.tp] if args.tp is not None else valid_tp_sizes(shape, args.max_tp)
    plans = [plan_tp(shape, gpu, tp, cfg) for tp in tps]
    best, why_not = smallest_fitting_tp(shape, gpu, cfg, max(args.max_tp, args.tp or 1))
    print(format_report(name, shape, gpu.name, gpu.memory_bytes, dtype, kv_dtype, cfg, plans, best, why_not))
    if args.tp is not None:
        return 0 if plans[0].fits else 1
    return 0 if best is not None else 1


def format_report(
    name: str,
    shape: ModelShape,
    gpu_name: str,
    gpu_bytes: int,
    dtype: str,
    kv_dtype: str,
    cfg: PlanConfig,
    plans: list[Plan],
    best: Plan | None,
    why_not: str,
) -> str:
    lines = [
        f"model    {name} ({shape.architecture}): {_count(shape.num_params())} parameters, "
        f"{shape.num_hidden_layers} layers, "
        f"{shape.num_attention_heads} query / {shape.num_key_value_heads} KV heads, "
        f"head_dim {shape.head_dim}",
        f"gpu      {gpu_name}, {gib(gpu_bytes)}; budget {cfg.gpu_memory_utilization:.2f} x memory = "
        f"{gib(int(gpu_bytes * cfg.gpu_memory_utilization))} per GPU",
        f"dtype    weights {dtype}, KV cache {kv_dtype}; "
        f"context {cfg.context_len} tokens, page {cfg.page_size} tokens",
        f"reserve  runtime {gib(cfg.runtime_reserve_bytes)} + activations of a "
        f"{cfg.max_num_batched_tokens}-token "
        f"step with {cfg.max_num_seqs} sequences' logits (per TP below)",
        "",
        f"{'TP':>3} {'weights/GPU':>12} {'activations':>12} {'KV/token/GPU':>13} {'KV cache/GPU':>13} "
        f"{'KV tokens':>10} {'seqs@ctx':>9}  fits",
    ]
    for p in plans:
        lines.append(
            f"{p.tp:>3} {gib(p.weight_bytes):>12} {gib(p.activation_bytes):>12} "
            f"{p.kv_bytes_per_token / 1024:>9.1f} KiB {gib(p.kv_cache_bytes):>13} "
            f"{p.num_kv_tokens:>10} {p.max_num_seqs_at_context:>9}  {'yes' if p.fits else 'no: ' + p.reason}"
        )
    lines.append("")
    if best is not None:
        lines.append(
            f"smallest TP that fits: {best.tp} ({best.num_kv_tokens} KV tokens per GPU, "
            f"{best.max_num_seqs_at_context} sequences of {cfg.context_len} tokens at once)"
        )
    else:
        lines.append(f"does not fit: {why_not}")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
