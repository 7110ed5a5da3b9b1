"""What the engine hands back: per-step request outputs, capacity and statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class TokenLogprobs(NamedTuple):
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the n most likely tokens at this position, most likely first


@dataclass
class RequestOutput:
    req_id: str
    new_token_ids: list[int]  # a stop token that finished the request is the last one here
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None
    logprobs: list[TokenLogprobs] | None  # one per new token when the request asked for logprobs
    num_prompt_tokens: int
    num_cached_tokens: int
    error: str | None = None  # with finish_reason "error": why the request failed a step on its own


@dataclass(frozen=True)
class Capacity:
    """How much more the engine can admit now (pages already promised to waiting prompts excluded)."""

    num_free_seqs: int = 0
    num_free_pages: int = 0
    page_size: int = 1


@dataclass(frozen=True)
class EngineStats:
    """Zero everywhere by default: an engine that holds nothing."""

    num_running: int = 0
    num_waiting: int = 0
    num_free_pages: int = 0
    num_total_pages: int = 0
    num_preemptions: int = 0  # cumulative
    prefix_cache_queries: int = 0  # prompt tokens looked up, cumulative
    prefix_cache_hits: int = 0  # of those, tokens found in the cache
    last_step_num_tokens: int = 0
    last_step_time_s: float = 0.0
    num_held_back: int = 0  # lower-class sequences the last step left out to keep a class's SLO
