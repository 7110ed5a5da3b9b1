"""The capacity planner against hand calculations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from busstop.cli import main
from worker.planner.gpus import GIB, MIB, get_gpu
from worker.planner.plan import (
    ModelShape,
    PlanConfig,
    kv_bytes_per_token,
    plan_tp,
    smallest_fitting_tp,
    tp_error,
    valid_tp_sizes,
    weight_elements_per_rank,
)
from worker.planner.presets import PRESETS, resolve_model

BF16 = 2


def test_llama_70b_on_h100_bf16_needs_two_gpus() -> None:
    """Llama-3.1-70B: hidden 8192, 80 layers, 64 q / 8 kv heads of 128, MLP 28672, vocab 128256, untied."""
    shape = ModelShape.from_hf_config(PRESETS["Llama-3.1-70B"])
    embed = 128256 * 8192  # 1_050_673_152, and the same again for lm_head
    q = o = 8192 * 8192  # 64 heads x 128 = 8192 columns
    k = v = 8 * 128 * 8192
    mlp = 3 * 8192 * 28672
    norms = 2 * 8192
    total = 80 * (q + k + v + o + mlp + norms) + 2 * embed + 8192
    assert total == 70_553_706_496
    assert shape.num_params() == total

    h100 = get_gpu("H100")
    budget = int(81559 * MIB * 0.90)  # 71.68 GiB of the 79.65 GiB the driver reports
    cfg = PlanConfig(weight_bytes=BF16, kv_bytes=BF16, context_len=8192)

    one = plan_tp(shape, h100, 1, cfg)
    assert one.weight_bytes == total * BF16  # 131.4 GiB: more than one GPU holds
    assert one.weight_bytes > h100.memory_bytes
    assert not one.fits and "exceed" in one.reason

    # TP=2: every sharded tensor halves (vocab 128256 is even); norms stay whole on each rank.
    per_rank = 80 * (q // 2 + k // 2 + v // 2 + o // 2 + mlp // 2 + norms) + 2 * (embed // 2) + 8192
    two = plan_tp(shape, h100, 2, cfg)
    assert two.weight_bytes == per_rank * BF16  # 65.71 GiB
    assert two.kv_bytes_per_token == 2 * 80 * 4 * 128 * BF16  # K and V, 80 layers, 4 of 8 kv heads: 160 KiB
    activations = 2048 * (2 * 8192 + 3 * 28672 // 2) * BF16 + 64 * (128256 // 2 + 128256) * 4
    assert two.activation_bytes == activations
    kv_cache = budget - per_rank * BF16 - 1 * GIB - activations
    assert two.kv_cache_bytes == kv_cache  # about 4.7 GiB
    pages = kv_cache // (163_840 * 16)
    assert two.num_kv_tokens == pages * 16 == 30_800
    assert two.max_num_seqs_at_context == pages // (8192 // 16) == 3
    assert two.fits

    best, why_not = smallest_fitting_tp(shape, h100, cfg)
    assert best is not None and best.tp == 2 and why_not == ""


def test_smollm2_on_l4_fits_one_gpu() -> None:
    """SmolLM2-135M: hidden 576, 30 layers, 9 q / 3 kv heads of 64, MLP 1536, vocab 49152, tied."""
    shape = ModelShape.from_hf_config(PRESETS["SmolLM2-135M"])
    per_layer = 2 * (576 * 576) + 2 * (3 * 64 * 576) + 3 * 576 * 1536 + 2 * 576
    total = 30 * per_layer + 49152 * 576 + 576  # the tied embedding counts once
    assert total == 134_515_008
    assert shape.num_params() == total

    l4 = get_gpu("l4")
    cfg = PlanConfig(weight_bytes=BF16, kv_bytes=BF16, context_len=8192)
    plan = plan_tp(shape, l4, 1, cfg)
    assert plan.weight_bytes == total * BF16
    assert plan.kv_bytes_per_token == 2 * 30 * 3 * 64 * BF16 == 23_040  # 22.5 KiB
    activations = 2048 * (2 * 576 + 3 * 1536) * BF16 + 64 * (49152 + 49152) * 4
    kv_cache = int(23034 * MIB * 0.90) - total * BF16 - 1 * GIB - activations
    assert plan.kv_cache_bytes == kv_cache
    assert plan.num_kv_tokens == kv_cache // (23_040 * 16) * 16 == 883_072
    assert plan.max_num_seqs_at_context == 883_072 // 8192 == 107
    best, _ = smallest_fitting_tp(shape, l4, cfg)
    assert best is not None and best.tp == 1


def test_tp_degrees_follow_the_head_counts() -> None:
    smollm2 = ModelShape.from_hf_config(PRESETS["SmolLM2-135M"])
    assert valid_tp_sizes(smollm2, 9) == [1, 3]  # 9 q heads, but MLP 1536 does not divide by 9
    assert tp_error(smollm2, 2) == "9 query heads do not divide by 2"
    llama = ModelShape.from_hf_config(PRESETS["Llama-3.1-70B"])
    assert valid_tp_sizes(llama, 16) == [1, 2, 4, 8, 16]
    # 8 kv heads over 16 ranks: each rank keeps one (replicated), so the KV per token stops shrinking.
    assert kv_bytes_per_token(llama, 16, BF16) == kv_bytes_per_token(llama, 8, BF16) == 2 * 80 * 128 * BF16
    qwen7 = ModelShape.from_hf_config(PRESETS["Qwen2.5-7B"])
    assert qwen7.attention_bias
    assert valid_tp_sizes(qwen7, 8) == [1, 2, 4]


def test_vocab_shards_round_up() -> None:
    shape = ModelShape.from_hf_config(PRESETS["SmolLM2-135M"])
    one = weight_elements_per_rank(shape, 1)
    three = weight_elements_per_rank(shape, 3)
    replicated = 30 * (2 * 576 + 2 * 64 * 576) + 576  # norms, and the one kv head each of k and v
    assert three == (one - 30 * (2 * 64 * 576 * 3 + 2 * 576) - 576) // 3 + replicated


def test_nothing_fits_says_why_and_what_would() -> None:
    shape = ModelShape.from_hf_config(PRESETS["Llama-3.1-405B"])
    best, why_not = smallest_fitting_tp(shape, get_gpu("H100"), PlanConfig(context_len=8192))
    assert best is None
    assert "at TP=8 weights 94.50 GiB exceed the budget 71.68 GiB" in why_not
    assert "at least 11 of these GPUs" in why_not and "TP=16 would fit" in why_not


def test_bad_input_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known GPUs"):
        get_gpu("V1000")
    with pytest.raises(ValueError, match="preset"):
        resolve_model(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        PlanConfig(gpu_memory_utilization=1.5)
    config = dict(PRESETS["SmolLM2-135M"], architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="supported: LlamaForCausalLM"):
        ModelShape.from_hf_config(config)


def test_cli_reads_a_config_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["Mistral-7B"]))
    assert main(["plan", "--model", str(tmp_path), "--gpu", "A10", "--context-len", "4096"]) == 0
    out = capsys.readouterr().out
    assert "(MistralForCausalLM): 7.25 B parameters" in out
    assert "smallest TP that fits: 1" in out


def test_cli_exit_status_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-3.1-70b", "--gpu", "H100", "--tp", "1", "--context-len", "8192"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "no: weights 131.42 GiB exceed the budget 71.68 GiB" in out
    assert "smallest TP that fits: 2 (30800 KV tokens per GPU, 3 sequences of 8192 tokens at once)" in out
    assert main(["plan", "--model", "SmolLM2-135M", "--gpu", "L4", "--tp", "2"]) == 2
    assert "TP=2: 9 query heads do not divide by 2" in capsys.readouterr().err
