"""Every message that crosses Redis, in one typed module.

Each stream entry carries one field, ``data``, holding the JSON of one of these models.
``v`` is the schema version: a reader rejects a message whose version it does not know
instead of guessing at its fields. No pickle on the wire.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
DATA_FIELD = "data"


class TrafficClass(StrEnum):
    """Who is asking. Workers serve interactive first, then priority, then batch."""

    INTERACTIVE = "interactive"
    PRIORITY = "priority"
    BATCH = "batch"


# Lower is served first; the engine's scheduler orders by (rank, arrival).
CLASS_RANK: dict[TrafficClass, int] = {
    TrafficClass.INTERACTIVE: 0,
    TrafficClass.PRIORITY: 1,
    TrafficClass.BATCH: 2,
}


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION


class SamplingOptions(BaseModel):
    """Sampling as the client asked for it; the worker validates and maps it onto the engine."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_tokens: int = 256
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None = no logprobs; n >= 0 = the sampled token's plus top-n


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    role: str
    content: str


class GenerateRequest(_Message):
    """One completion request, as the gateway puts it on a request stream.

    Exactly one of ``messages`` (chat: the worker applies the chat template), ``prompt`` (text)
    or ``prompt_token_ids`` is set.
    """

    req_id: str
    model: str
    traffic_class: TrafficClass = TrafficClass.INTERACTIVE
    tenant: str = ""
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingOptions = Field(default_factory=SamplingOptions)
    arrival_time: float = 0.0  # unix seconds, set by the gateway
    traceparent: str | None = None  # W3C trace context of the gateway's span


class ReplyKind(StrEnum):
    ACCEPTED = "accepted"  # the worker admitted the request; carries worker_id and usage.prompt_tokens
    DELTA = "delta"  # new tokens and their text
    DONE = "done"  # final: finish_reason and usage
    ERROR = "error"  # final: the request failed; error says why


class TopLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float


class TokenLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class ErrorInfo(BaseModel):
    """An OpenAI-shaped error, with the HTTP status the gateway should answer with."""

    model_config = ConfigDict(frozen=True)

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None


class ReplyEvent(_Message):
    """One entry of a request's reply stream.

    ``seq`` counts from 0 without gaps within a request. A worker that resumes a reclaimed request
    continues after the last seq already in the stream, so a reader never sees a gap or a duplicate.
    """

    seq: int
    kind: ReplyKind
    worker_id: str | None = None
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    usage: Usage | None = None
    error: ErrorInfo | None = None


class CancelRequest(_Message):
    """Sent to the control stream of the worker holding a request: abort it now."""

    req_id: str


class WorkerHeartbeat(_Message):
    """A worker's liveness and load, stored under a key with a TTL."""

    worker_id: str
    model: str
    max_model_len: int
    num_running: int = 0
    num_waiting: int = 0
    num_free_pages: int = 0
    num_total_pages: int = 0
    # The longest token's UTF-8 length: a prompt of B bytes has at least B / max_token_bytes tokens,
    # which lets the gateway refuse a prompt far over the window before queueing it. 0: unknown.
    max_token_bytes: int = 0
    time: float = 0.0
