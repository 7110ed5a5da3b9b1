"""The engine's greedy tokens and logprobs equal a full-recompute transformers reference.

Logprobs are compared to 1e-4 absolute (fp32, same weights, different kernel order).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.worker.tiny_llama import (
    assert_page_accounting,
    make_engine,
    make_hf_model,
    one_torch_thread,
    reference_greedy,
)
from worker.engine.engine import Engine, RequestOutput
from worker.engine.sampling_params import SamplingParams


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


ATOL = 1e-4
MAX_TOKENS = 8
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=3)


def prompts(n: int, seed: int = 1, shared_prefix: list[int] | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 17, 9, 30, 5, 12][:n]
    return [(shared_prefix or []) + torch.randint(0, 256, (k,), generator=g).tolist() for k in lengths]


def run_staggered(engine: Engine, all_prompts: list[list[int]], add_every: int = 2
                  ) -> dict[str, list[RequestOutput]]:
    """Add one request every add_every steps, step to completion, check page accounting every step."""
    outputs: dict[str, list[RequestOutput]] = {}
    pending = list(enumerate(all_prompts))
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % add_every == 0:
            i, prompt = pending.pop(0)
            engine.add_request(f"r{i}", prompt, GREEDY)
        for out in engine.step():
            outputs.setdefault(out.req_id, []).append(out)
        assert_page_accounting(engine)
        step += 1
    assert engine.block_manager.num_free_pages == engine.block_manager.num_total_pages
    return outputs


def check_against_reference(hf_model, all_prompts, outputs) -> None:
    for i, prompt in enumerate(all_prompts):
        outs = outputs[f"r{i}"]
        tokens = [t for o in outs for t in o.new_token_ids]
        ref_tokens, ref_logprobs = reference_greedy(hf_model, prompt, MAX_TOKENS)
        assert tokens == ref_tokens, f"request {i}"
        assert outs[-1].finish_reason == "length"
        logprobs = [lp for o in outs for lp in (o.logprobs or [])]
        assert len(logprobs) == MAX_TOKENS
        for lp, ref in zip(logprobs, ref_logprobs, strict=True):
            assert lp.logprob == pytest.approx(float(ref[lp.token_id]), abs=ATOL)
            ref_top = ref.topk(3)
            assert [t for t, _ in lp.top] == ref_top.indices.tolist()
            assert [v for _, v in lp.top] == pytest.approx(ref_top.values.tolist(), abs=ATOL)


@pytest.mark.parametrize(
    ("architecture", "overrides"),
    [
        ("LlamaForCausalLM", {}),
        ("LlamaForCausalLM", {"tie_word_embeddings": True}),
        ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 16}}),
        ("MistralForCausalLM", {"sliding_window": None}),
        ("Qwen2ForCausalLM", {}),
    ],
    ids=["llama", "llama-tied", "llama3-rope", "mistral", "qwen2-bias"],
)
def test_staggered_arrivals_match_reference(architecture: str, overrides: dict) -> None:
    hf_model = make_hf_model(architecture, **overrides)
    all_prompts = prompts(6)
    outputs = run_staggered(make_engine(hf_model), all_prompts)
    check_against_reference(hf_model, all_prompts, outputs)


def test_chunked_prefill_matches_reference() -> None:
    hf_model = make_hf_model()
    all_prompts = prompts(6)
    engine = make_engine(hf_model, max_num_batched_tokens=7)
    outputs = run_staggered(engine, all_prompts, add_every=1)
    check_against_reference(hf_model, all_prompts, outputs)


def test_preemption_matches_reference() -> None:
    hf_model = make_hf_model()
    all_prompts = prompts(6)
    # 12 pages of 4 tokens hold one 38-token sequence but not all six at once.
    engine = make_engine(hf_model, num_pages=12, enable_prefix_caching=False)
    outputs = run_staggered(engine, all_prompts, add_every=1)
    assert engine.stats().num_preemptions > 0
    check_against_reference(hf_model, all_prompts, outputs)


def test_prefix_cache_hit_matches_reference_with_fewer_computed_tokens() -> None:
    hf_model = make_hf_model()
    shared = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(7)).tolist()
    all_prompts = prompts(3, shared_prefix=shared)

    def computed_tokens(enable: bool) -> tuple[int, dict[str, list[RequestOutput]], Engine]:
        engine = make_engine(hf_model, enable_prefix_caching=enable)
        total = 0
        outputs: dict[str, list[RequestOutput]] = {}
        for i, prompt in enumerate(all_prompts):  # one after another, so later ones hit the cache
            engine.add_request(f"r{i}", prompt, GREEDY)
            while engine.has_unfinished():
                for out in engine.step():
                    outputs.setdefault(out.req_id, []).append(out)
                total += engine.stats().last_step_num_tokens
                assert_page_accounting(engine)
        return total, outputs, engine

    cached_total, outputs, engine = computed_tokens(True)
    plain_total, _, _ = computed_tokens(False)
    check_against_reference(hf_model, all_prompts, outputs)
    assert outputs["r0"][0].num_cached_tokens == 0
    assert outputs["r1"][0].num_cached_tokens == 16
    assert outputs["r2"][0].num_cached_tokens == 16
    assert plain_total - cached_total == 32
    assert engine.stats().prefix_cache_hits == 32
