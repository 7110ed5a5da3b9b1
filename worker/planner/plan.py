"""How a model's weights and KV cache split over a tensor-parallel group, and what fits a GPU.

The split is the one the TP layers use (worker/model): q/k/v and gate/up are column-parallel
(each rank holds num_heads/tp query heads and intermediate/tp MLP columns), o_proj and down_proj
row-parallel, the embedding and LM head vocab-parallel (ceil(vocab/tp) rows per rank), norms
replicated. KV heads are split when num_kv_heads >= tp and replicated otherwise (each rank keeps
one KV head, the one its query heads read), so the KV cache per rank never drops below one head.

Memory budget per GPU, as vLLM counts it: gpu_memory_utilization x total memory holds the
weights, a runtime reserve (CUDA graphs, NCCL and cuBLAS workspaces, allocator slack), the
activation peak of one step, and the KV cache; the rest of the GPU is left to the CUDA context
and other processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from worker.model.config import ModelConfig
from worker.planner.gpus import GIB, GpuSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}
_DTYPE_ALIASES = {
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float8": "fp8",
}
LOGITS_BYTES = 4  # logits are computed and sampled in float32
MAX_TP_SEARCH = 128  # largest TP degree suggested beyond max_tp


def dtype_bytes(dtype: str) -> int:
    name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def canonical_dtype(dtype: str) -> str:
    dtype_bytes(dtype)
    return _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())


@dataclass(frozen=True)
class ModelShape(ModelConfig):
    """A model's configuration as the engine reads it (one parser, one list of architectures), with
    what the planner adds."""

    def num_params(self) -> int:
        return weight_elements_per_rank(self, 1)


@dataclass(frozen=True)
class PlanConfig:
    weight_bytes: int = 2  # per weight element (bf16)
    kv_bytes: int = 2  # per KV cache element
    context_len: int = 2048  # tokens one sequence may hold (prompt + output)
    gpu_memory_utilization: float = 0.90
    runtime_reserve_bytes: int = 1 * GIB
    max_num_batched_tokens: int = 2048  # tokens in one step, sets the activation peak
    max_num_seqs: int = 64  # sequences in one step, sets the logits buffers
    page_size: int = 16  # KV cache page, in tokens

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if (
            self.context_len < 1
            or self.page_size < 1
            or self.max_num_batched_tokens < 1
            or self.max_num_seqs < 1
        ):
            raise ValueError("context_len, page_size, max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.runtime_reserve_bytes < 0:
            raise ValueError("runtime_reserve_bytes must be >= 0")


def tp_error(shape: ModelShape, tp: int) -> str | None:
    """Why ``shape`` cannot be split over ``tp`` ranks, or None when it can."""
    if tp < 1:
        return "the tensor-parallel size must be >= 1"
    if shape.num_attention_heads % tp:
        return f"{shape.num_attention_heads} query heads do not divide by {tp}"
    if shape.intermediate_size % tp:
        return f"intermediate size {shape.intermediate_size} does not divide by {tp}"
    kv = shape.num_key_value_heads
    if kv >= tp and kv % tp:
        return f"{kv} KV heads do not divide by {tp}"
    if kv < tp and tp % kv:
        return f"{kv} KV heads cannot be replicated evenly over {tp} ranks"
    return None


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    return max(1, num_kv_heads // tp)


def weight_elements_per_rank(shape: ModelShape, tp: int) -> int:
    """Weight elements on the heaviest rank (vocab shards are ceil(vocab / tp) rows)."""
    h, hd = shape.hidden_size, shape.head_dim
    q_heads = shape.num_attention_heads // tp
    kv_heads = kv_heads_per_rank(shape.num_key_value_heads, tp)
    vocab_rows = math.ceil(shape.vocab_size / tp)
    per_layer = (
        q_heads * hd * h  # q_proj
        + 2 * kv_heads * hd * h  # k_proj, v_proj
        + h * q_heads * hd  # o_proj
        + 3 * h * (shape.intermediate_size // tp)  # gate_proj, up_proj, down_proj
        + 2 * h  # input and post-attention norms, replicated
    )
    if shape.attention_bias:
        per_layer += (q_heads + 2 * kv_heads) * hd
    embeddings = vocab_rows * h * (1 if shape.tie_word_embeddings else 2)
    return shape.num_hidden_layers * per_layer + embeddings + h  # + final norm


def kv_bytes_per_token(shape: ModelShape, tp: int, kv_bytes: int) -> int:
    """K and V of one token in every layer, for the heads one rank holds."""
    return (
        2
        * shape.num_hidden_layers
        * kv_heads_per_rank(shape.num_key_value_heads, tp)
        * shape.head_dim
        * kv_bytes
    )


def activation_bytes(shape: ModelShape, tp: int, cfg: PlanConfig) -> int:
    """Peak activations of one step: max_num_batched_tokens tokens through the widest layer,
    plus the float32 logits (this rank's vocab shard and, on rank 0, the gathered full vocab).

    Estimate: residual + normed hidden (2 x hidden), the MLP's gate/up output and its product
    (3 x intermediate / tp); attention's q/k/v is narrower than the MLP for these models.
    """
    tokens = cfg.max_num_batched_tokens
    hidden = tokens * (2 * shape.hidden_size + 3 * shape.intermediate_size // tp) * cfg.weight_bytes
    vocab_shard = math.ceil(shape.vocab_size / tp)
    logits = cfg.max_num_seqs * (vocab_shard + shape.vocab_size) * LOGITS_BYTES
    return hidden + logits


@dataclass(frozen=True)
class Plan:
    """What one GPU of a TP group holds. Bytes are per GPU; ``fits`` needs one full context of KV."""

    tp: int
    budget_bytes: int  # gpu_memory_utilization x GPU memory
    weight_bytes: int
    runtime_reserve_bytes: int
    activation_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int  # what is left for the KV cache; 0 when the rest does not fit
    num_kv_tokens: int  # whole pages only
    max_num_seqs_at_context: int  # sequences of context_len tokens the KV cache holds at once
    fits: bool
    reason: str  # why it does not fit, or "" when it does


def plan_tp(shape: ModelShape, gpu: GpuSpec, tp: int, cfg: PlanConfig) -> Plan:
    if (error := tp_error(shape, tp)) is not None:
        raise ValueError(f"TP={tp}: {error}")
    budget = int(gpu.memory_bytes * cfg.gpu_memory_utilization)
    weights = weight_elements_per_rank(shape, tp) * cfg.weight_bytes
    activations = activation_bytes(shape, tp, cfg)
    kv_per_token = kv_bytes_per_token(shape, tp, cfg.kv_bytes)
    kv_cache = max(0, budget - weights - cfg.runtime_reserve_bytes - activations)
    num_pages = kv_cache // (kv_per_token * cfg.page_size)
    pages_per_seq = math.ceil(cfg.context_len / cfg.page_size)
    max_seqs = num_pages // pages_per_seq
    reason = ""
    if weights > budget:
        reason = f"weights {gib(weights)} exceed the budget {gib(budget)}"
    elif weights + cfg.runtime_reserve_bytes + activations > budget:
        reserve = cfg.runtime_reserve_bytes + activations
        reason = f"weights {gib(weights)} + reserve {gib(reserve)} exceed the budget {gib(budget)}"
    elif max_seqs < 1:
        reason = (
            f"KV cache holds {num_pages * cfg.page_size} tokens, less than one context of {cfg.context_len}"
        )
    return Plan(
        tp=tp,
        budget_bytes=budget,
        weight_bytes=weights,
        runtime_reserve_bytes=cfg.runtime_reserve_bytes,
        activation_bytes=activations,
        kv_bytes_per_token=kv_per_token,
        kv_cache_bytes=kv_cache,
        num_kv_tokens=num_pages * cfg.page_size,
        max_num_seqs_at_context=max_seqs,
        fits=not reason,
        reason=reason,
    )


def valid_tp_sizes(shape: ModelShape, max_tp: int) -> list[int]:
    return [tp for tp in range(1, max_tp + 1) if tp_error(shape, tp) is None]


def smallest_fitting_tp(
    shape: ModelShape, gpu: GpuSpec, cfg: PlanConfig, max_tp: int = 8
) -> tuple[Plan | None, str]:
    """The plan with the smallest TP degree <= max_tp that fits, or None and why nothing does."""
    plans = [plan_tp(shape, gpu, tp, cfg) for tp in valid_tp_sizes(shape, max_tp)]
    for candidate in plans:
        if candidate.fits:
            return candidate, ""
    if not plans:
        return None, f"no TP degree up to {max_tp} splits this model evenly"
    largest = plans[-1]
    total_weights = weight_elements_per_rank(shape, 1) * cfg.weight_bytes
    room = largest.budget_bytes - cfg.runtime_reserve_bytes
    need = math.ceil(total_weights / room) if room > 0 else 0
    hint = f"; the weights alone ({gib(total_weights)}) need at least {need} of these GPUs" if need else ""
    beyond = next((p for p in _plans_beyond(shape, gpu, cfg, max_tp) if p.fits), None)
    if beyond is not None:
        hint += f"; TP={beyond.tp} would fit (more GPUs than max_tp={max_tp}, e.g. across nodes)"
    return None, f"nothing up to TP={largest.tp} fits: at TP={largest.tp} {largest.reason}{hint}"


def _plans_beyond(shape: ModelShape, gpu: GpuSpec, cfg: PlanConfig, max_tp: int) -> Iterator[Plan]:
    for tp in range(max_tp + 1, MAX_TP_SEARCH + 1):
        if tp_error(shape, tp) is None:
            yield plan_tp(shape, gpu, tp, cfg)


def gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.2f} GiB"
