"""Talk to a running stack the way a client does: streamed chat completions over SSE, /metrics scrapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class StreamedChat:
    req_id: str = ""
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    num_chunks: int = 0


def stream_chat(
    url: str,
    api_key: str,
    content: str,
    max_tokens: int,
    on_chunk: Callable[[StreamedChat], None] | None = None,
    headers: dict[str, str] | None = None,
) -> StreamedChat:
    """A greedy streamed chat completion run to ``max_tokens``; ``on_chunk`` sees each content chunk."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = StreamedChat()
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api_key}", **(headers or {})},
        timeout=httpx.Timeout(180.0, connect=10.0),
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            out.req_id = chunk["id"].removeprefix("chatcmpl-")
            if chunk.get("usage"):
                out.usage = chunk["usage"]
            for choice in chunk["choices"]:
                out.text += choice["delta"].get("content") or ""
                out.finish_reason = choice.get("finish_reason") or out.finish_reason
                if choice["delta"].get("content"):
                    out.num_chunks += 1
                    if on_chunk is not None:
                        on_chunk(out)
    return out


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample at ``url`` (a /metrics endpoint), keyed by (name, labels)."""
    text = httpx.get(url, timeout=10.0).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
