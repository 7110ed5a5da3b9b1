"""Traffic classes in the engine: an interactive request that arrives while batch work fills the engine
runs first, the batch sequence it preempts resumes later, and every client still gets exactly the
tokens it would have got alone (nothing emitted twice, nothing lost). Class order and aging are
covered at the scheduler level in test_scheduler.py."""

from __future__ import annotations

import pytest

from shared.messages import CLASS_RANK, TrafficClass
from tests.worker.tiny_llama import assert_page_accounting, make_engine, make_hf_model, reference_greedy
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams

BATCH = CLASS_RANK[TrafficClass.BATCH]
INTERACTIVE = CLASS_RANK[TrafficClass.INTERACTIVE]


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model()


def run(
    engine: Engine, on_step: dict[int, tuple[str, list[int], int]], params: SamplingParams
) -> tuple[dict[str, list[int]], list[str]]:
    """Step until done, adding ``on_step[i]`` = (req_id, prompt, priority) before step i; the tokens each
    request got, and the order requests finished in."""
    tokens: dict[str, list[int]] = {}
    finished: list[str] = []
    step = 0
    while engine.has_unfinished() or step in on_step or step == 0:
        if step in on_step:
            req_id, prompt, priority = on_step[step]
            engine.add_request(req_id, prompt, params, priority=priority)
        for out in engine.step():
            tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
            if out.finish_reason is not None:
                finished.append(out.req_id)
        assert_page_accounting(engine)
        step += 1
    return tokens, finished


def test_interactive_preempts_running_batch_and_both_get_their_exact_tokens(hf_model) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.0)
    batch_prompt, chat_prompt = [5, 6, 7, 8, 9], [11, 12, 13]
    engine = make_engine(hf_model, max_num_seqs=1)  # one slot: the chat request can only run by preemption
    tokens, finished = run(
        engine, {0: ("batch", batch_prompt, BATCH), 3: ("chat", chat_prompt, INTERACTIVE)}, params
    )
    assert finished == ["chat", "batch"]
    assert engine.stats().num_preemptions >= 1
    assert tokens["chat"] == reference_greedy(hf_model, chat_prompt, 12)[0]
    assert tokens["batch"] == reference_greedy(hf_model, batch_prompt, 12)[0]
