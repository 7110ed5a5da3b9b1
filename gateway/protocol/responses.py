"""OpenAI response objects, as plain dicts built by small functions.

Chunks are built and serialized once per reply batch on the streaming path, so they are dicts
(serialized by pydantic-core's Rust encoder) rather than validated models; the shapes follow
OpenAI's API reference field for field, including the explicit ``null``s.
"""

from __future__ import annotations

from typing import Any

from shared.messages import TokenLogprob, Usage

Json = dict[str, Any]


def usage_json(usage: Usage) -> Json:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs_json(logprobs: list[TokenLogprob]) -> Json:
    """``choices[].logprobs`` of a chat completion: ``{"content": [...]}``."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": _bytes(lp.token),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token)} for t in lp.top
                ],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs_json(logprobs: list[TokenLogprob], text_offset: int) -> Json:
    """``choices[].logprobs`` of a legacy completion; offsets count from ``text_offset``."""
    offsets = []
    for lp in logprobs:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    delta: Json,
    *,
    index: int = 0,
    logprobs: Json | None = None,
    finish_reason: str | None = None,
) -> Json:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def completion_choice(index: int, text: str, logprobs: Json | None, finish_reason: str | None) -> Json:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(
    id: str,
    created: int,
    model: str,
    text: str,
    *,
    index: int = 0,
    logprobs: Json | None = None,
    finish_reason: str | None = None,
) -> Json:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [completion_choice(index, text, logprobs, finish_reason)],
    }


def usage_chunk(id: str, created: int, model: str, object: str, usage: Usage) -> Json:
    """The last chunk when ``stream_options.include_usage``: no choices, only usage."""
    return {
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage_json(usage),
    }


def chat_choice(
    index: int, content: str | None, tool_calls: list[Json] | None, logprobs: Json | None,
    finish_reason: str | None,
) -> Json:
    message: Json = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_completion(id: str, created: int, model: str, choices: list[Json], usage: Usage) -> Json:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_json(usage),
    }


def completion(id: str, created: int, model: str, choices: list[Json], usage: Usage) -> Json:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_json(usage),
    }
