"""The requests a worker holds, and how each engine report becomes reply events.

Lives on the I/O side: it owns every request's detokenizer and reply sequence number, so the
engine thread only ever sees token ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared.messages import ErrorInfo, ReplyEvent, ReplyKind, TokenLogprob, TopLogprob, Usage
from shared.telemetry.tracing import get_tracer
from worker.engine.outputs import RequestOutput, TokenLogprobs
from worker.service.engine_loop import EngineReport
from worker.service.intake_message import Charge
from worker.service.prepare import PreparedRequest
from worker.service.replies import HeldMessage, ReplyBatch
from worker.service.resume import ResumeState
from worker.service.trace import WorkerRequestTrace
from worker.tokenizer import IncrementalDetokenizer, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class ActiveRequest:
    """A request handed to the engine whose reply is not complete yet."""

    req_id: str
    message: HeldMessage
    num_prompt_tokens: int
    detokenizer: IncrementalDetokenizer
    next_seq: int
    num_output_tokens: int
    wants_logprobs: bool
    trace: WorkerRequestTrace
    priority: int = 0  # the engine priority of its traffic class (0 interactive ... 2 batch)
    is_cancelled: bool = False
    gateway_id: str | None = None  # the gateway reading the reply (``worker.service.readers``)
    unsent_text: str = ""  # a resumed request's text that its first worker did not send: goes out next
    charge: Charge | None = None  # what its tenant's share paid for it (internal classes)

    def settle(self, batch: ReplyBatch, num_tokens: int | None = None) -> None:
        """Settle the tenant's charge against the tokens the request took (``num_tokens``, by default
        its prompt and outputs), with its final write."""
        if self.charge is not None:
            served = self.num_prompt_tokens + self.num_output_tokens if num_tokens is None else num_tokens
            c = self.charge
            batch.settle(self.req_id, c.counters, c.tenant, c.settlement(served))

    def event(self, kind: ReplyKind, **fields: Any) -> ReplyEvent:
        event = ReplyEvent(seq=self.next_seq, kind=kind, **fields)
        self.next_seq += 1
        return event


def error_event(seq: int, error: ErrorInfo) -> ReplyEvent:
    return ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error)


def step_failed(why: str) -> ErrorInfo:
    """The error of a request that failed an engine step on its own (a poison request)."""
    return ErrorInfo(
        status=500,
        message=f"the request failed while being generated and is not retried: {why}",
        type="server_error",
        code="request_failed",
    )


def too_many_deliveries(num_workers: int) -> ErrorInfo:
    return ErrorInfo(
        status=500,
        message=f"{num_workers} workers failed while serving this request; it is not retried",
        type="server_error",
        code="worker_failed",
    )


class RequestTracker:
    def __init__(self, worker_id: str, tokenizer: Tokenizer) -> None:
        self.worker_id = worker_id
        self._tokenizer = tokenizer
        self._tracer = get_tracer("busstop.worker")
        self.active: dict[str, ActiveRequest] = {}

    def held_messages(self) -> list[HeldMessage]:
        return [req.message for req in self.active.values()]

    def start(self, prepared: PreparedRequest, message: HeldMessage, resume: ResumeState,
              charge: Charge | None = None) -> ActiveRequest:
        """Track a request about to be handed to the engine; a resumed one continues ``resume``."""
        detokenizer = IncrementalDetokenizer(self._tokenizer, prepared.prompt_token_ids, list(prepared.stop))
        unsent = detokenizer.resume(resume.output_token_ids, resume.text) if resume.output_token_ids else ""
        req = ActiveRequest(
            req_id=prepared.req_id,
            message=message,
            num_prompt_tokens=len(prepared.prompt_token_ids),
            detokenizer=detokenizer,
            next_seq=resume.next_seq,
            num_output_tokens=len(resume.output_token_ids),
            wants_logprobs=prepared.params.logprobs is not None,
            priority=prepared.priority,
            unsent_text=unsent,
            gateway_id=prepared.gateway_id,
            charge=charge,
            trace=WorkerRequestTrace(
                self._tracer, prepared.traceparent, prepared.req_id, prepared.traffic_class, self.worker_id
            ),
        )
        self.active[req.req_id] = req
        return req

    def cancel(self, req_id: str) -> bool:
        """Mark ``req_id`` cancelled; True if the engine holds it and must abort it."""
        req = self.active.get(req_id)
        if req is None or req.is_cancelled:
            return False
        req.is_cancelled = True
        return True

    def apply(self, report: EngineReport, batch: ReplyBatch) -> list[str]:
        """Add the events of ``report`` to ``batch``; returns req_ids the engine must abort (stop strings)."""
        to_abort: list[str] = []
        for req_id in report.admitted:
            req = self.active.get(req_id)
            if req is not None:
                req.trace.admitted(req.num_prompt_tokens)
                usage = Usage(prompt_tokens=req.num_prompt_tokens)
                batch.add(req_id, req.event(ReplyKind.ACCEPTED, worker_id=self.worker_id, usage=usage))
        for req_id, why in report.rejected:
            req = self.active.pop(req_id, None)
            if req is not None:
                req.trace.finish(None, error=why)
                batch.add(req_id, error_event(req.next_seq, ErrorInfo(status=400, message=why)))
                batch.finish(req_id, req.message)
                req.settle(batch, num_tokens=0)  # it never ran: its tenant pays nothing
        for out in report.outputs:
            req = self.active.get(out.req_id)
            if req is None:
                continue  # finished by a stop string or cancelled earlier; this is the engine's late word
            if self._apply_output(req, out, batch) and out.finish_reason is None:
                to_abort.append(req.req_id)
        return to_abort

    def hand_back(self, req_ids: set[str] | None = None) -> list[str]:
        """Forget the active requests ``req_ids`` (default: all), left pending in Redis for other
        workers; returns the ids of those it held."""
        left = [r for r in self.active if req_ids is None or r in req_ids]
        for req_id in left:
            req = self.active.pop(req_id)
            req.trace.finish(None, req.num_output_tokens, error="left for another worker")
        return left

    def forget(self, messages: set[HeldMessage]) -> list[str]:
        """Forget the requests of ``messages``, which another worker has reclaimed; returns their ids."""
        return self.hand_back({r.req_id for r in self.active.values() if r.message in messages})

    def _fail(self, req: ActiveRequest, why: str, batch: ReplyBatch) -> None:
        """The request failed a step on its own: it is poison, answered with a 500 and never retried."""
        log.error("request %s failed a step on its own: %s", req.req_id, why)
        batch.poison(req.req_id, why)
        batch.add(req.req_id, req.event(ReplyKind.ERROR, error=step_failed(why)))
        batch.finish(req.req_id, req.message)
        req.settle(batch)
        del self.active[req.req_id]
        req.trace.finish(None, req.num_output_tokens, error=why)

    def _apply_output(self, req: ActiveRequest, out: RequestOutput, batch: ReplyBatch) -> bool:
        """Add ``out``'s events; True if the request is finished here."""
        if out.finish_reason == "error":
            self._fail(req, out.error or "unknown error", batch)
            return True
        token_ids = list(out.new_token_ids)
        finish_reason = out.finish_reason
        if req.is_cancelled:
            finish_reason = "abort"
        text = req.detokenizer.push(token_ids) if token_ids and not req.is_cancelled else ""
        if req.unsent_text and not req.is_cancelled:
            text, req.unsent_text = req.unsent_text + text, ""
        if req.detokenizer.finished_by_stop:
            finish_reason = "stop"
        elif finish_reason in ("stop", "length"):
            text += req.detokenizer.flush()  # held back for a stop string that never came
        req.num_output_tokens += len(token_ids)
        if token_ids:
            req.trace.on_tokens(out.num_cached_tokens)
        if token_ids or text:
            logprobs = self._logprobs(out.logprobs) if req.wants_logprobs and out.logprobs else None
            batch.add(
                req.req_id, req.event(ReplyKind.DELTA, text=text, token_ids=token_ids, logprobs=logprobs)
            )
        if finish_reason is None:
            return False
        usage = Usage(
            prompt_tokens=req.num_prompt_tokens,
            completion_tokens=req.num_output_tokens,
            cached_tokens=out.num_cached_tokens,
        )
        batch.add(req.req_id, req.event(ReplyKind.DONE, finish_reason=finish_reason, usage=usage))
        batch.finish(req.req_id, req.message)
        req.settle(batch)
        del self.active[req.req_id]
        req.trace.finish(finish_reason, req.num_output_tokens)
        log.info(
            "request finished",
            extra={
                "req_id": req.req_id,
                "trace_id": req.trace.trace_id,
                "finish_reason": finish_reason,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
            },
        )
        return True

    def _logprobs(self, entries: list[TokenLogprobs]) -> list[TokenLogprob]:
        decode = self._tokenizer.decode
        return [
            TokenLogprob(
                token=decode([entry.token_id]),
                logprob=entry.logprob,
                top=[TopLogprob(token=decode([tid]), logprob=lp) for tid, lp in entry.top],
            )
            for entry in entries
        ]
