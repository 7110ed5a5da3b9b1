"""The engine thread with a tiny random Llama: admission, rejection, abort, load snapshots, failure."""

from __future__ import annotations

import queue

import pytest
import transformers

from tests.worker.tiny_llama import make_engine, make_hf_model
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.service.engine_loop import AbortCommand, AddCommand, EngineLoop, EngineReport
from worker.service.prepare import PreparedRequest


@pytest.fixture(scope="module")
def hf_model() -> transformers.PreTrainedModel:
    return make_hf_model()


def request(req_id: str, num_prompt_tokens: int = 8, max_tokens: int = 6) -> PreparedRequest:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
    return PreparedRequest(req_id, [1 + i % 200 for i in range(num_prompt_tokens)], params, 0, 0.0, ())


class Collector:
    def __init__(self) -> None:
        self.reports: queue.Queue[EngineReport] = queue.Queue()

    def __call__(self, report: EngineReport) -> None:
        self.reports.put(report)

    def until_finished(self, req_ids: set[str]) -> list[EngineReport]:
        seen: list[EngineReport] = []
        while req_ids:
            report = self.reports.get(timeout=60)
            seen.append(report)
            req_ids -= {r for r, _ in report.rejected}
            req_ids -= {o.req_id for o in report.outputs if o.finish_reason is not None}
        return seen


def test_requests_run_to_completion_and_bad_ones_are_rejected(hf_model: transformers.PreTrainedModel) -> None:
    engine = make_engine(hf_model)
    collector = Collector()
    loop = EngineLoop(engine, collector)
    loop.start()
    loop.submit(AddCommand(request("good", max_tokens=6)))
    loop.submit(AddCommand(request("too-long", num_prompt_tokens=300)))
    loop.submit(AddCommand(request("resumed", max_tokens=6), output_token_ids=(5, 6, 7)))
    reports = collector.until_finished({"good", "too-long", "resumed"})
    loop.stop(timeout_s=10)

    assert sorted(r for report in reports for r in report.admitted) == ["good", "resumed"]
    (rejected,) = [r for report in reports for r in report.rejected]
    assert rejected[0] == "too-long" and "max_model_len" in rejected[1]
    tokens: dict[str, int] = {}
    for report in reports:
        for out in report.outputs:
            tokens[out.req_id] = tokens.get(out.req_id, 0) + len(out.new_token_ids)
    assert tokens == {"good": 6, "resumed": 3}  # a resumed request only produces what is left
    assert (loop.stats.num_running, loop.stats.num_free_pages) == (0, loop.stats.num_total_pages)
    assert not loop.is_alive()


def test_an_abort_frees_the_pages_within_a_step(hf_model: transformers.PreTrainedModel) -> None:
    engine = make_engine(hf_model)
    collector = Collector()
    loop = EngineLoop(engine, collector)
    loop.start()
    loop.submit(AddCommand(request("long", max_tokens=200)))
    while not any(o.req_id == "long" for o in collector.reports.get(timeout=60).outputs):
        pass
    loop.submit(AbortCommand("long"))
    loop.submit(AbortCommand("never-added"))
    reports = collector.until_finished({"long"})
    loop.stop(timeout_s=10)
    assert reports[-1].outputs[-1].finish_reason == "abort"
    assert reports[-1].stats.num_running == 0
    assert reports[-1].stats.num_free_pages == reports[-1].stats.num_total_pages


class FailingEngine(Engine):
    def step(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost")


def test_an_engine_failure_is_reported_and_ends_the_loop(hf_model: transformers.PreTrainedModel) -> None:
    engine = make_engine(hf_model)
    engine.__class__ = FailingEngine
    collector = Collector()
    loop = EngineLoop(engine, collector)
    loop.start()
    loop.submit(AddCommand(request("r")))
    report = collector.reports.get(timeout=60)
    assert report.fatal == "RuntimeError: device lost"
    loop.stop(timeout_s=10)
    assert not loop.is_alive()
