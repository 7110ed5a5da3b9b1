"""The engine: add requests, step, abort. Synchronous, token ids only, driven by one thread."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence as SequenceOf

import torch

from worker.engine.block_manager import BlockManager
from worker.engine.config import EngineConfig
from worker.engine.constraint import ConstraintError, TokenConstraint
from worker.engine.isolation import StepIsolator
from worker.engine.outputs import Capacity, EngineStats, RequestOutput, TokenLogprobs
from worker.engine.runner import ModelRunner
from worker.engine.sampling_params import SamplingParams
from worker.engine.scheduler import Scheduler
from worker.engine.sequence import Sequence
from worker.engine.tenant_share import TenantShare
from worker.model.llama import LlamaForCausalLM

__all__ = ["Capacity", "Engine", "EngineBroken", "EngineStats", "RequestOutput", "TokenLogprobs", "generate"]

# Steps in a row in which every sequence failed, even alone, before the engine is taken as broken.
MAX_FAILED_STEPS = 3


class EngineBroken(RuntimeError):
    """Steps keep failing whatever runs in them: the engine, not a request, is at fault."""


class Engine:
    def __init__(self, model: LlamaForCausalLM, config: EngineConfig, eos_token_ids: tuple[int, ...]) -> None:
        mc = model.config
        if config.max_model_len > mc.max_position_embeddings:
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's "
                             f"max_position_embeddings {mc.max_position_embeddings}")
        if any(not 0 <= t < mc.vocab_size for t in eos_token_ids):
            raise ValueError(f"eos_token_ids {eos_token_ids} must be in [0, {mc.vocab_size})")
        self.config = config
        self.model_config = mc
        self.runner = ModelRunner.build(model, config, eos_token_ids)
        self.device = self.runner.device
        self.model = self.runner.model
        self.kv_cache = self.runner.kv_cache
        self.eos_token_ids = self.runner.eos_token_ids
        self.block_manager = BlockManager(
            self.kv_cache.num_pages, config.page_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self._isolator = StepIsolator(self.runner)
        self._newcomers: set[str] = set()  # added since the last step ran
        self._num_failed_steps = 0  # steps in a row in which nothing ran
        self._seqs: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []  # abort outputs, handed out by the next step
        self._last_step_num_tokens = 0
        self._last_step_time_s = 0.0

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    priority: int = 0, arrival_time: float | None = None,
                    output_token_ids: SequenceOf[int] = (),
                    constraint: TokenConstraint | None = None, share: TenantShare | None = None) -> None:
        """Queue a request (priority: lower runs first; arrival_time: time.time() seconds; share: its
        tenant, whose slot share within its class it runs in).

        output_token_ids are tokens already produced for it (a resumed request): context that counts
        toward max_tokens and is not emitted again; a ``constraint`` (structured output) replays them.
        ValueError on bad input.
        """
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
        if req_id in self._seqs:
            raise ValueError(f"request {req_id!r} is already in the engine")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        outputs = list(output_token_ids)
        tokens = list(prompt_token_ids) + outputs
        vocab_size = self.model_config.vocab_size
        if any(not 0 <= t < vocab_size for t in tokens) or any(
                t >= vocab_size for t in params.stop_token_ids) or any(
                t >= vocab_size for t, _ in params.logit_bias):
            raise ValueError(f"token ids must be in [0, {vocab_size})")
        max_len = self.config.max_model_len
        if len(tokens) >= max_len:
            raise ValueError(f"the prompt has {len(tokens)} tokens, but max_model_len is {max_len} "
                             f"(at most {max_len - 1} prompt tokens)")
        if len(outputs) >= params.max_tokens:
            raise ValueError(
                f"{len(outputs)} output tokens already produced, max_tokens is {params.max_tokens}")
        longest = min(len(prompt_token_ids) + params.max_tokens, max_len)
        if self.block_manager.num_pages_for(longest) > self.block_manager.num_total_pages:
            raise ValueError(f"a sequence of {longest} tokens does not fit the KV cache "
                             f"({self.block_manager.num_total_pages} pages of {self.config.page_size})")
        if constraint is not None and outputs:
            try:
                constraint.replay(outputs)
            except ConstraintError as exc:
                raise ValueError(f"the tokens already sent break the request's grammar: {exc}") from None
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        arrival = time.time() if arrival_time is None else arrival_time
        seq = Sequence(req_id, list(prompt_token_ids), params, priority, arrival, outputs, generator,
                       constraint, share)
        self._seqs[req_id] = seq
        self._newcomers.add(req_id)
        self.scheduler.add(seq)

    def abort(self, req_id: str) -> None:
        """Free the request's pages now; the next step returns its finish_reason="abort" output."""
        seq = self._seqs.pop(req_id, None)
        if seq is None:
            return
        self.scheduler.remove(seq)
        self._pending.append(RequestOutput(req_id, [], "abort", None, seq.num_prompt_tokens,
                                           seq.num_cached_tokens))

    def has_unfinished(self) -> bool:
        return bool(self._seqs or self._pending)

    def step(self) -> list[RequestOutput]:
        """One scheduling iteration; outputs of requests that got a token, finished or were aborted."""
        start = time.perf_counter()
        outputs, self._pending = self._pending, []
        scheduled = self.scheduler.schedule() if self.scheduler.has_unfinished() else None
        if scheduled is None:
            self.scheduler.num_held_back = 0  # nothing left to hold back (the last ones were aborted)
        if scheduled is None or not scheduled.scheduled:
            self._last_step_num_tokens, self._last_step_time_s = 0, time.perf_counter() - start
            return outputs
        step = self._isolator.execute(scheduled, self._newcomers)
        self._judge(step.failed, num_ran=len(step.ran.scheduled))
        for seq, why in step.failed:
            self._seqs.pop(seq.req_id, None)
            self.scheduler.remove(seq)
            outputs.append(RequestOutput(seq.req_id, [], "error", None, seq.num_prompt_tokens,
                                         seq.num_cached_tokens, error=why))
        scheduled, result = step.ran, step.output
        logprobs = {item.seq.req_id: lp
                    for item, lp in zip(scheduled.scheduled, result.logprobs, strict=True)}
        for seq in self.scheduler.update_from_output(scheduled, result.sampled_token_ids, self.eos_token_ids):
            lp = logprobs[seq.req_id]
            outputs.append(RequestOutput(seq.req_id, [seq.token_ids[-1]], seq.finish_reason,
                                         None if lp is None else [lp], seq.num_prompt_tokens,
                                         seq.num_cached_tokens, error=seq.error))
            if seq.finish_reason is not None:
                del self._seqs[seq.req_id]
        self._last_step_num_tokens = scheduled.num_batched_tokens
        self._last_step_time_s = time.perf_counter() - start
        shaper = self.scheduler.shaper
        if shaper is not None and not step.failed:  # a step that isolated a failure ran more than once
            shaper.observe(scheduled.num_batched_tokens, len(scheduled.scheduled), self._last_step_time_s)
        return outputs

    def _judge(self, failed: list[tuple[Sequence, str]], num_ran: int) -> None:
        """Count steps in which nothing ran; raise ``EngineBroken`` when that keeps happening."""
        self._newcomers.clear()
        self._num_failed_steps = self._num_failed_steps + 1 if failed and not num_ran else 0
        if self._num_failed_steps >= MAX_FAILED_STEPS:
            raise EngineBroken(f"{MAX_FAILED_STEPS} steps in a row failed for every sequence: {failed[0][1]}")

    def capacity(self) -> Capacity:
        sched = self.scheduler
        promised = sum(self.block_manager.num_pages_for(s.num_tokens) for s in sched.waiting)
        return Capacity(
            num_free_seqs=max(0, self.config.max_num_seqs - len(sched.running) - len(sched.waiting)),
            num_free_pages=max(0, self.block_manager.num_free_pages - promised),
            page_size=self.config.page_size,
        )

    def stats(self) -> EngineStats:
        sched = self.scheduler
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            num_free_pages=self.block_manager.num_free_pages,
            num_total_pages=self.block_manager.num_total_pages,
            num_preemptions=sched.num_preemptions,
            prefix_cache_queries=sched.prefix_cache_queries,
            prefix_cache_hits=sched.prefix_cache_hits,
            last_step_num_tokens=self._last_step_num_tokens,
            last_step_time_s=self._last_step_time_s,
            num_held_back=sched.num_held_back,
        )


def generate(engine: Engine, prompts_token_ids: list[list[int]],
             params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
    """Run prompts to completion offline; returns each prompt's generated token ids, in order."""
    all_params = params if isinstance(params, list) else [params] * len(prompts_token_ids)
    if len(all_params) != len(prompts_token_ids):
        raise ValueError(f"{len(all_params)} SamplingParams for {len(prompts_token_ids)} prompts")
    prefix = f"generate-{uuid.uuid4().hex[:8]}-"
    for i, (prompt, p) in enumerate(zip(prompts_token_ids, all_params, strict=True)):
        engine.add_request(f"{prefix}{i}", prompt, p)
    results: dict[str, list[int]] = {f"{prefix}{i}": [] for i in range(len(prompts_token_ids))}
    remaining = set(results)
    while remaining:
        for out in engine.step():
            if out.req_id in results:
                results[out.req_id].extend(out.new_token_ids)
                if out.finish_reason is not None:
                    remaining.discard(out.req_id)
    return [results[f"{prefix}{i}"] for i in range(len(prompts_token_ids))]

