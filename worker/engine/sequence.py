"""One request's state inside the engine: its tokens, pages, progress and status."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch

from worker.engine.constraint import TokenConstraint
from worker.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from worker.engine.tenant_share import TenantShare


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """token_ids = prompt + outputs; the first num_computed_tokens of them have K/V in page_ids.

    Outputs handed in at add time (a resumed request) count toward max_tokens but are never emitted.
    """

    def __init__(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int,
                 arrival_time: float, output_token_ids: list[int], generator: torch.Generator | None,
                 constraint: TokenConstraint | None = None, share: TenantShare | None = None) -> None:
        self.req_id = req_id
        self.params = params
        self.priority = priority
        self.arrival_time = arrival_time
        self.token_ids: list[int] = prompt_token_ids + output_token_ids
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prefix-cache hit at first admission
        self.is_first_admission = True
        self.page_ids: list[int] = []
        self.page_hashes: list[int] = []  # chained hashes of the leading full, computed pages
        self.status = SequenceStatus.WAITING
        # Aging credits time spent waiting in this engine (not in Redis before it): waited_s sums the
        # finished waits, waiting_since starts the current one. The credit is kept while running.
        self.waiting_since = arrival_time
        self.waited_s = 0.0
        self.finish_reason: str | None = None
        self.error: str | None = None  # with finish_reason "error": why
        self.generator = generator
        self.constraint = constraint  # structured output: which tokens may come next
        self.share = share  # the tenant whose slot share it runs in (tenant_share.py); None: no tenant

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def __repr__(self) -> str:
        return (f"Sequence({self.req_id!r}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, pages={self.page_ids})")
