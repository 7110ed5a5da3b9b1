"""Every message that crosses Redis, in one typed module.

Each stream entry carries one field, ``data``, holding the JSON of one of these models.
``v`` is the schema version: a reader rejects a message whose version it does not know
instead of guessing at its fields. No pickle on the wire. Every reader reads through ``decode``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
DATA_FIELD = "data"
# An internal request's entry also carries ``cost``: the tokens it is expected to take (prompt and
# max_tokens, estimated by the gateway), charged to its tenant's share when a worker takes it.
COST_FIELD = "cost"
_DATA_FIELD_BYTES = DATA_FIELD.encode()  # the field's name in a client that does not decode replies


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
    logit_bias: dict[int, float] = Field(default_factory=dict)  # token id -> bias added to its logit
    # Structured output: a grammar in shared/structured.py's dialect the output must match.
    grammar: str | None = None


class ToolCall(BaseModel):
    """A function call an assistant message made (``arguments`` is JSON text, as OpenAI sends it)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    name: str
    arguments: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    role: str  # system, user, assistant or tool
    content: str
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers


class GenerateRequest(_Message):
    """One completion request, as the gateway puts it on a request stream.

    Exactly one of ``messages`` (chat: the worker applies the chat template), ``prompt`` (text)
    or ``prompt_token_ids`` is set.
    """

    req_id: str
    model: str
    traffic_class: TrafficClass = TrafficClass.INTERACTIVE
    tenant: str = ""
    # The tenant's share within its internal class (the keys file's weight): twice the weight, twice
    # the tokens when tenants contend.
    tenant_weight: float = Field(default=1.0, gt=0)
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    # Chat: the functions the model may call, OpenAI's tool objects ({"type": "function", ...}).
    tools: list[dict[str, Any]] | None = None
    sampling: SamplingOptions = Field(default_factory=SamplingOptions)
    arrival_time: float = 0.0  # unix seconds, set by the gateway
    traceparent: str | None = None  # W3C trace context of the gateway's span
    # The gateway replica serving the client: when its liveness key (``keys.gateway_key``) is gone, or
    # the request's lease (``keys.request_lease``) is, nobody waits for the reply and workers abort it.
    gateway_id: str | None = None


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
    tensor_parallel_size: int = 1
    tokens_per_s: float = 0.0  # output tokens per second since the previous heartbeat
    time: float = 0.0


class MessageError(ValueError):
    """A Redis entry that is not a readable message of the expected kind and schema version."""


M = TypeVar("M", bound=_Message)


def decode(model_cls: type[M], fields: Mapping[Any, Any] | None) -> M:
    """The ``model_cls`` message in a stream entry's ``fields`` (or ``{DATA_FIELD: value}`` of a key).

    The one way every reader reads a message: any problem (no data field, bad JSON, missing or wrong
    fields, a schema version this code does not know) is a ``MessageError``, and the reader decides in
    one line what that means for it (answer 502, skip it, fail the request). It never crashes a process.
    """
    data = None if fields is None else fields.get(DATA_FIELD, fields.get(_DATA_FIELD_BYTES))
    name = model_cls.__name__
    if data is None:
        raise MessageError(f"{name}: the entry has no {DATA_FIELD!r} field")
    try:
        message = model_cls.model_validate_json(data)
    except ValidationError as exc:
        version = _version_of(data)
        if version is not None and version != SCHEMA_VERSION:
            raise MessageError(_wrong_version(name, version)) from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise MessageError(f"unreadable {name}: {where + ': ' if where else ''}{first['msg']}") from None
    if message.v != SCHEMA_VERSION:
        raise MessageError(_wrong_version(name, message.v))
    return message


def _wrong_version(name: str, version: int) -> str:
    return f"{name}: schema version {version}, this reader knows {SCHEMA_VERSION}"


def _version_of(data: str | bytes) -> int | None:
    try:
        value = json.loads(data).get("v")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
