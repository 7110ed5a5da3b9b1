"""A step that raises fails only its culprit: the engine finds it, the other requests stay exact.

The fault is injected into the sampler the runner calls (the engine's collaborator): it raises for
any batch that holds a sequence marked by ``min_p == POISON_MIN_P``, as a sampler bug triggered by
one request's parameters would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.worker.test_engine import drain
from tests.worker.tiny_llama import (
    make_engine,
    make_hf_model,
    one_torch_thread,
    reference_greedy,
)
from worker.engine import runner
from worker.engine.engine import MAX_FAILED_STEPS, EngineBroken, RequestOutput
from worker.engine.sampling_params import SamplingParams

POISON_MIN_P = 0.123
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
POISON = SamplingParams(max_tokens=8, temperature=0.5, min_p=POISON_MIN_P, ignore_eos=True)
PROMPTS = [[1, 5, 9, 2], [3, 3, 7], [8, 1, 4, 4, 6]]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model()


def poisoned_sampler(after_num_outputs: int = 0):  # type: ignore[no-untyped-def]
    real = runner.sample

    def sample(logits, seqs, eos_token_ids):  # type: ignore[no-untyped-def]
        out = real(logits, seqs, eos_token_ids)  # seeded rows draw their noise before the failure
        if any(s.params.min_p == POISON_MIN_P and s.num_output_tokens >= after_num_outputs for s in seqs):
            raise RuntimeError("sampler blew up")
        return out

    return sample


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


@pytest.mark.parametrize("after_num_outputs", [0, 3], ids=["fails-on-arrival", "fails-mid-stream"])
def test_a_failing_request_fails_alone_and_the_others_stay_exact(
    hf_model, monkeypatch: pytest.MonkeyPatch, after_num_outputs: int
) -> None:
    monkeypatch.setattr(runner, "sample", poisoned_sampler(after_num_outputs))
    engine = make_engine(hf_model)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"good-{i}", prompt, GREEDY)
    engine.add_request("poison", [2, 4, 6], POISON)
    outputs = drain(engine)

    (last,) = outputs["poison"][-1:]
    assert last.finish_reason == "error"
    assert last.error == "RuntimeError: sampler blew up"
    assert len(tokens(outputs["poison"])) == after_num_outputs
    for i, prompt in enumerate(PROMPTS):
        assert tokens(outputs[f"good-{i}"]) == reference_greedy(hf_model, prompt, 8)[0]
        assert outputs[f"good-{i}"][-1].finish_reason == "length"
    assert engine.block_manager.num_free_pages == engine.block_manager.num_total_pages

    engine.add_request("after", PROMPTS[0], GREEDY)  # the engine goes on serving
    assert tokens(drain(engine)["after"]) == reference_greedy(hf_model, PROMPTS[0], 8)[0]


def test_seeded_requests_that_share_a_failed_step_draw_the_same_tokens(
    hf_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=1234, ignore_eos=True)
    clean = make_engine(hf_model)
    clean.add_request("s", PROMPTS[1], seeded)
    expected = tokens(drain(clean)["s"])

    monkeypatch.setattr(runner, "sample", poisoned_sampler(after_num_outputs=2))
    engine = make_engine(hf_model)
    engine.add_request("s", PROMPTS[1], seeded)
    engine.add_request("poison", PROMPTS[2], POISON)
    outputs = drain(engine)
    assert outputs["poison"][-1].finish_reason == "error"
    assert tokens(outputs["s"]) == expected


def test_steps_that_fail_for_every_request_stop_the_engine(hf_model, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(logits, seqs, eos_token_ids):  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost")

    monkeypatch.setattr(runner, "sample", broken)
    engine = make_engine(hf_model)
    for i in range(MAX_FAILED_STEPS - 1):
        engine.add_request(f"r{i}", PROMPTS[0], GREEDY)
        (out,) = engine.step()
        assert out.finish_reason == "error"
    engine.add_request("last", PROMPTS[0], GREEDY)
    with pytest.raises(EngineBroken, match="device lost"):
        engine.step()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 2**63),
        ("seed", 2**70),
        ("repetition_penalty", float("inf")),
        ("temperature", float("nan")),
        ("max_tokens", 2**40),
        ("stop_token_ids", (2**40,)),
    ],
)
def test_sampling_params_out_of_bounds_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_top_k_beyond_the_vocabulary_is_off(hf_model) -> None:
    engine = make_engine(hf_model)
    params = SamplingParams(max_tokens=4, temperature=1.0, top_k=2**31 - 1, seed=7, ignore_eos=True)
    engine.add_request("k", PROMPTS[0], params)
    assert len(tokens(drain(engine)["k"])) == 4
