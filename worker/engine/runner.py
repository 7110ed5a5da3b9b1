"""The model runner: one step's tensors from the scheduler's record, a forward pass, sampling.

It never decides who runs. Per step it builds the flat input ids, the attention metadata (once, for
all layers), runs the model, computes logits only for the sequences that sample, and samples.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from worker.engine.attention import TorchAttentionBackend, resolve_backend_name
from worker.engine.attention.base import BaseAttentionBackend
from worker.engine.attention.metadata import AttentionMetadata
from worker.engine.config import EngineConfig
from worker.engine.kv_cache import KVCache, page_bytes
from worker.engine.outputs import TokenLogprobs
from worker.engine.sampler import sample
from worker.engine.scheduler import SchedulerOutput
from worker.kernels import cpu_ops
from worker.model.llama import LlamaForCausalLM


@dataclass(frozen=True)
class RunnerOutput:
    sampled_token_ids: list[int | None]  # per scheduled sequence, in the scheduler's order
    logprobs: list[TokenLogprobs | None]


class ModelRunner:
    """One rank's model, KV cache and attention backend. Rank 0 of a tensor-parallel group also holds
    the step sender (it arrives in ``model.parallel``) and hands every step to the other ranks, which
    are only runners following those steps (worker/parallel/rank.py)."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, backend: BaseAttentionBackend,
                 eos_token_ids: frozenset[int], device: torch.device) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.backend = backend
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.step_sender = model.parallel.step_sender

    @classmethod
    def build(cls, model: LlamaForCausalLM, config: EngineConfig, eos_token_ids: tuple[int, ...] = ()
              ) -> ModelRunner:
        """The model on ``config``'s device and dtype, a KV cache of ``config``'s size, its backend."""
        mc = model.config
        device = torch.device(config.device)
        model = model.to(device=device, dtype=config.dtype).eval()
        num_kv_heads = model.num_kv_heads_per_rank
        num_pages = config.num_pages or config.kv_cache_bytes // page_bytes(
            mc.num_hidden_layers, config.page_size, num_kv_heads, mc.head_dim, config.dtype)
        if num_pages < 1:
            raise ValueError(f"kv_cache_bytes {config.kv_cache_bytes} is too small for one page")
        kv_cache = KVCache(mc.num_hidden_layers, num_pages, config.page_size, num_kv_heads, mc.head_dim,
                           config.dtype, device)
        backend: BaseAttentionBackend = TorchAttentionBackend()
        if resolve_backend_name(config.attention_backend, device, config.dtype) == "flashinfer":
            from worker.engine.attention.flashinfer_backend import FlashInferAttentionBackend

            backend = FlashInferAttentionBackend(*model.attention_shape, config.dtype, device)
        if device.type == "cpu":
            cpu_ops()  # builds the fused kernels now (once per machine), not in the first request's step
        return cls(model, kv_cache, backend, frozenset(eos_token_ids), device)

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> RunnerOutput:
        # Decodes (one new token) first, as the metadata requires; the rest keep their order.
        order = sorted(range(len(output.scheduled)), key=lambda i: output.scheduled[i].num_new_tokens != 1)
        batch = [output.scheduled[i] for i in order]
        input_ids: list[int] = []
        q_lens: list[int] = []
        kv_lens: list[int] = []
        for item in batch:
            start = item.seq.num_computed_tokens
            input_ids.extend(item.seq.token_ids[start:start + item.num_new_tokens])
            q_lens.append(item.num_new_tokens)
            kv_lens.append(start + item.num_new_tokens)
        metadata = AttentionMetadata.build(q_lens, kv_lens, [item.seq.page_ids for item in batch],
                                           self.kv_cache.page_size, self.device)
        self.backend.plan(metadata)
        ids = torch.tensor(input_ids, dtype=torch.int64).to(self.device, non_blocking=True)
        sampling = [j for j, item in enumerate(batch) if item.is_sampling]
        ends = list(itertools.accumulate(q_lens))
        last_rows = torch.tensor([ends[j] - 1 for j in sampling], dtype=torch.int64, device=self.device)
        if self.step_sender is not None:  # TP: the other ranks run this step too
            self.step_sender.send(ids, metadata, last_rows)
        hidden = self.model(ids, metadata.positions, self.backend, self.kv_cache)  # [num_tokens, hidden]

        sampled: list[int | None] = [None] * len(output.scheduled)
        logprobs: list[TokenLogprobs | None] = [None] * len(output.scheduled)
        if sampling:
            logits = self.model.compute_logits(hidden[last_rows])  # [num_sampling, vocab]
            result = sample(logits, [batch[j].seq for j in sampling], self.eos_token_ids)
            for j, token, lp in zip(sampling, result.token_ids, result.logprobs, strict=True):
                sampled[order[j]] = token
                logprobs[order[j]] = lp
        return RunnerOutput(sampled, logprobs)
