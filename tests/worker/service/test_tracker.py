"""Engine reports -> reply events, with the real SmolLM2 tokenizer: deltas, stop strings, resume, usage."""

from __future__ import annotations

import pytest

from shared.messages import ReplyKind
from worker.engine.outputs import RequestOutput, TokenLogprobs
from worker.engine.sampling_params import SamplingParams
from worker.loader.load import load_tokenizer, resolve_path
from worker.service.engine_loop import EngineReport
from worker.service.prepare import PreparedRequest
from worker.service.replies import HeldMessage, ReplyBatch
from worker.service.resume import ResumeState
from worker.service.tracker import RequestTracker
from worker.tokenizer import Tokenizer

MESSAGE = HeldMessage("requests", "1-0")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(resolve_path("default"))


def prepared(
    tokenizer: Tokenizer, req_id: str = "r", stop: tuple[str, ...] = (), logprobs: int | None = None
):
    ids = tokenizer.encode("Once upon a time")
    return PreparedRequest(req_id, ids, SamplingParams(max_tokens=50, logprobs=logprobs), 0, 0.0, stop)


def output(req_id: str, token_ids: list[int], finish_reason: str | None = None, **kw) -> RequestOutput:
    return RequestOutput(req_id, token_ids, finish_reason, kw.get("logprobs"), 4, kw.get("cached", 0))


def test_a_request_streams_accepted_deltas_and_done_with_usage(tokenizer: Tokenizer) -> None:
    tracker = RequestTracker("w1", tokenizer)
    tracker.start(prepared(tokenizer), MESSAGE, ResumeState())
    text_ids = tokenizer.encode(" there was a cat")
    batch = ReplyBatch()
    assert tracker.apply(EngineReport(admitted=["r"]), batch) == []
    tracker.apply(EngineReport(outputs=[output("r", text_ids[:2])]), batch)
    tracker.apply(EngineReport(outputs=[output("r", text_ids[2:] + [2], "stop", cached=3)]), batch)

    kinds = [(e.seq, e.kind) for _, e in batch.events]
    assert kinds == [(0, ReplyKind.ACCEPTED), (1, ReplyKind.DELTA), (2, ReplyKind.DELTA), (3, ReplyKind.DONE)]
    accepted, done = batch.events[0][1], batch.events[-1][1]
    assert accepted.worker_id == "w1" and accepted.usage.prompt_tokens == len(
        tokenizer.encode("Once upon a time")
    )
    assert "".join(e.text for _, e in batch.events) == tokenizer.decode(text_ids)
    assert done.finish_reason == "stop"
    assert (done.usage.completion_tokens, done.usage.cached_tokens) == (len(text_ids) + 1, 3)
    assert batch.finals == [("r", MESSAGE)] and tracker.active == {}


def test_a_stop_string_ends_the_text_before_it_and_asks_for_an_abort(tokenizer: Tokenizer) -> None:
    tracker = RequestTracker("w1", tokenizer)
    tracker.start(prepared(tokenizer, stop=("cat",)), MESSAGE, ResumeState())
    batch = ReplyBatch()
    to_abort = tracker.apply(
        EngineReport(outputs=[output("r", tokenizer.encode(" there was a cat who"))]), batch
    )
    assert to_abort == ["r"]
    delta, done = (e for _, e in batch.events)
    assert delta.text == " there was a "
    assert done.finish_reason == "stop"
    # The engine's own word on the aborted request comes a step later and is ignored.
    late = ReplyBatch()
    assert tracker.apply(EngineReport(outputs=[output("r", [], "abort")]), late) == [] and not late


def test_a_cancelled_request_finishes_with_abort(tokenizer: Tokenizer) -> None:
    tracker = RequestTracker("w1", tokenizer)
    tracker.start(prepared(tokenizer), MESSAGE, ResumeState())
    assert tracker.cancel("r") is True
    assert tracker.cancel("r") is False and tracker.cancel("unknown") is False
    batch = ReplyBatch()
    tracker.apply(EngineReport(outputs=[output("r", [], "abort")]), batch)
    ((_, done),) = batch.events
    assert (done.kind, done.finish_reason) == (ReplyKind.DONE, "abort")
    assert batch.finals == [("r", MESSAGE)]


def test_a_resumed_request_continues_seq_and_text_without_repeating(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(" there was a cat")
    tracker = RequestTracker("w2", tokenizer)
    sent = tokenizer.decode(ids[:2])
    tracker.start(prepared(tokenizer), MESSAGE, ResumeState(next_seq=3, output_token_ids=ids[:2], text=sent))
    batch = ReplyBatch()
    tracker.apply(EngineReport(admitted=["r"], outputs=[output("r", ids[2:], "length")]), batch)
    accepted, delta, done = (e for _, e in batch.events)
    assert [accepted.seq, delta.seq, done.seq] == [3, 4, 5]
    assert accepted.worker_id == "w2"
    assert tokenizer.decode(ids[:2]) + delta.text == tokenizer.decode(ids)
    assert done.usage.completion_tokens == len(ids)


def test_rejected_requests_get_a_400_and_are_acked(tokenizer: Tokenizer) -> None:
    tracker = RequestTracker("w1", tokenizer)
    tracker.start(prepared(tokenizer), MESSAGE, ResumeState())
    batch = ReplyBatch()
    tracker.apply(EngineReport(rejected=[("r", "prompt too long")]), batch)
    ((_, error),) = batch.events
    assert (error.kind, error.error.status, error.error.message) == (ReplyKind.ERROR, 400, "prompt too long")
    assert batch.finals == [("r", MESSAGE)]


def test_logprobs_carry_token_text(tokenizer: Tokenizer) -> None:
    tracker = RequestTracker("w1", tokenizer)
    tracker.start(prepared(tokenizer, logprobs=1), MESSAGE, ResumeState())
    (tid,) = tokenizer.encode(" cat")
    lps = [TokenLogprobs(tid, -0.5, [(tid, -0.5)])]
    batch = ReplyBatch()
    tracker.apply(EngineReport(outputs=[output("r", [tid], logprobs=lps)]), batch)
    ((_, delta),) = batch.events
    assert [(lp.token, lp.logprob, [(t.token, t.logprob) for t in lp.top]) for lp in delta.logprobs] == [
        (" cat", -0.5, [(" cat", -0.5)])
    ]
