"""Sampling: filters, penalties, min_tokens, logprobs, and seeds that hold whatever the batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.worker.tiny_llama import make_engine, make_hf_model, one_torch_thread
from worker.engine.engine import Engine
from worker.engine.sampler import sample
from worker.engine.sampling_params import SamplingParams
from worker.engine.sequence import Sequence


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


EOS = 3


def seq(prompt: list[int], outputs: list[int] = (), seed: int | None = None, **params) -> Sequence:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return Sequence("r", list(prompt), SamplingParams(seed=seed, **params), 0, 0.0, list(outputs), generator)


def logits_row(values: dict[int, float], vocab_size: int = 8) -> torch.Tensor:
    row = torch.zeros(vocab_size)
    for token, value in values.items():
        row[token] = value
    return row


def draws(row: torch.Tensor, n: int, **params) -> set[int]:
    """The set of tokens drawn in n independent rows with the same logits."""
    seqs = [seq([1], **params) for _ in range(n)]
    return set(sample(row.repeat(n, 1), seqs, frozenset({EOS})).token_ids)


def test_greedy_takes_the_argmax() -> None:
    row = logits_row({5: 2.0, 6: 1.0})
    assert sample(row[None], [seq([1], temperature=0.0)], frozenset()).token_ids == [5]


def test_top_k_top_p_and_min_p_restrict_the_candidates() -> None:
    row = logits_row({0: 3.0, 1: 2.9, 2: 2.8, 4: 1.0})  # others at 0
    assert draws(row, 400, temperature=1.0) > {0, 1, 2, 4}
    assert draws(row, 400, temperature=1.0, top_k=2) == {0, 1}
    assert draws(row, 400, temperature=1.0, top_p=0.01) == {0}
    assert draws(row, 400, temperature=1.0, min_p=0.85) == {0, 1}


def test_repetition_presence_and_frequency_penalties_move_the_choice() -> None:
    row = logits_row({5: 2.0, 6: 1.5})
    greedy = dict(temperature=0.0)
    assert sample(row[None], [seq([5], **greedy)], frozenset()).token_ids == [5]
    assert sample(row[None], [seq([5], repetition_penalty=2.0, **greedy)], frozenset()).token_ids == [6]
    # presence/frequency look at outputs only, not the prompt
    assert sample(row[None], [seq([5], presence_penalty=1.0, **greedy)], frozenset()).token_ids == [5]
    assert sample(row[None], [seq([1], [5], presence_penalty=1.0, **greedy)], frozenset()).token_ids == [6]
    assert sample(row[None], [seq([1], [5], frequency_penalty=0.3, **greedy)], frozenset()).token_ids == [5]
    twice = seq([1], [5, 5], frequency_penalty=0.3, **greedy)
    assert sample(row[None], [twice], frozenset()).token_ids == [6]


def test_min_tokens_bans_eos_and_stop_tokens_until_reached() -> None:
    row = logits_row({EOS: 5.0, 7: 4.0, 2: 3.0})
    eos = frozenset({EOS})
    assert sample(row[None], [seq([1], temperature=0.0, min_tokens=1)], eos).token_ids == [7]
    banned_stop = seq([1], temperature=0.0, min_tokens=1, stop_token_ids=(7,))
    assert sample(row[None], [banned_stop], eos).token_ids == [2]
    assert sample(row[None], [seq([1], [9], temperature=0.0, min_tokens=1)], eos).token_ids == [EOS]
    ignoring = seq([1], temperature=0.0, min_tokens=1, ignore_eos=True)
    assert sample(row[None], [ignoring], eos).token_ids == [EOS]


def test_logprobs_are_the_raw_distribution_with_top_n() -> None:
    row = logits_row({5: 2.0, 6: 1.0, 2: 0.5})
    out = sample(row[None], [seq([1], temperature=0.0, logprobs=2, repetition_penalty=1.5)], frozenset())
    (lp,) = out.logprobs
    ref = row.log_softmax(-1)
    assert lp.token_id == 5
    assert lp.logprob == pytest.approx(float(ref[5]))
    assert [t for t, _ in lp.top] == [5, 6]
    assert [v for _, v in lp.top] == pytest.approx([float(ref[5]), float(ref[6])])
    assert sample(row[None], [seq([1], temperature=0.0)], frozenset()).logprobs == [None]


def test_same_seed_same_row_whatever_the_neighbours() -> None:
    row = torch.randn(64, generator=torch.Generator().manual_seed(3))
    alone = sample(row[None], [seq([1], seed=11)], frozenset()).token_ids
    target = seq([1], seed=11)
    crowd = [seq([1], seed=5), seq([1]), target, seq([1], temperature=0.0)]
    crowded = sample(row.repeat(4, 1), crowd, frozenset()).token_ids[2]
    assert crowded == alone[0]


def run_requests(engine: Engine, requests: list[tuple[str, list[int], SamplingParams]], stagger: int
                 ) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    pending = list(requests)
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % stagger == 0:
            req_id, prompt, params = pending.pop(0)
            engine.add_request(req_id, prompt, params)
        for out in engine.step():
            tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
        step += 1
    return tokens


def test_seeded_requests_reproduce_across_batch_compositions() -> None:
    hf_model = make_hf_model()
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    target = ("target", [5, 6, 7, 8, 9], seeded)

    alone = run_requests(make_engine(hf_model), [target], stagger=1)["target"]
    others = [
        ("greedy", [1, 2, 3], SamplingParams(max_tokens=20, temperature=0.0)),
        ("unseeded", list(range(30, 60)), SamplingParams(max_tokens=9, temperature=0.8)),
        ("other-seed", [9, 9, 9, 9], SamplingParams(max_tokens=15, temperature=1.2, seed=7, top_k=20)),
    ]
    crowded = run_requests(make_engine(hf_model), others[:2] + [target] + others[2:], stagger=2)["target"]
    # a small KV pool: the target is preempted and recomputed, still the same tokens
    small = make_engine(hf_model, num_pages=10, max_num_batched_tokens=8)
    preempted = run_requests(small, others + [target], stagger=1)["target"]
    assert small.stats().num_preemptions > 0
    assert alone == crowded == preempted
    other_seed = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=4321)
    assert run_requests(make_engine(hf_model), [("t", target[1], other_seed)], stagger=1)["t"] != alone
