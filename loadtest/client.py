"""One timed streaming request against any OpenAI-compatible server.

Times are taken when each SSE event carrying text arrives: TTFT is from sending the request to the
first text, inter-token latency (ITL) is the gap between consecutive text events, and TPOT is the
mean time per output token after the first. Token counts come from the final usage chunk
(``stream_options.include_usage``), which both busstop and vLLM send.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from loadtest.workload import RequestSpec


@dataclass
class RequestResult:
    ok: bool
    error: str = ""
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    start_s: float = 0.0  # perf_counter at send time, to place the request on the run's timeline

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.num_output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)


async def iter_sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` payload of each server-sent event, as it arrives."""
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
        elif not line and data_lines:
            yield "\n".join(data_lines)
            data_lines = []
    if data_lines:
        yield "\n".join(data_lines)


def build_body(model: str, spec: RequestSpec, chat: bool, ignore_eos: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "max_tokens": spec.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True  # a vLLM extension busstop also accepts: exact output lengths
    if chat:
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    return body


def _error_message(payload: str) -> str:
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        return payload[:200]
    if isinstance(error, dict):
        return str(error.get("message", error))[:200]
    return str(error)[:200]


async def run_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    spec: RequestSpec,
    *,
    api_key: str | None = None,
    chat: bool = True,
    ignore_eos: bool = True,
    extra_body: dict[str, object] | None = None,
    extra_headers: dict[str, str] | None = None,
    on_text: Callable[[], None] | None = None,
) -> RequestResult:
    """Send one streaming request and time it; never raises for server or network errors.

    ``extra_body`` adds fields to the request body (e.g. vLLM's ``priority``); ``on_text`` is called
    at each event that carries text, for callers that count tokens as they arrive."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers.update(extra_headers or {})
    start = time.perf_counter()
    result = RequestResult(ok=False, start_s=start)
    first: float | None = None
    last = start
    num_text_events = 0
    try:
        body = {**build_body(model, spec, chat, ignore_eos), **(extra_body or {})}
        async with client.stream("POST", url.rstrip("/") + path, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {_error_message(response.text)}"
                return result
            async for data in iter_sse_data(response):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"stream error: {_error_message(data)}"
                    return result
                usage = chunk.get("usage")
                if usage:
                    result.num_prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    result.num_output_tokens = int(usage.get("completion_tokens") or 0)
                if not any(_choice_text(c, chat) for c in chunk.get("choices") or []):
                    continue
                now = time.perf_counter()
                if on_text is not None:
                    on_text()
                if first is None:
                    first = now
                else:
                    result.itl_s.append(now - last)
                last = now
                num_text_events += 1
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    if first is None:
        result.error = "no text in the stream"
        return result
    result.ok = True
    result.ttft_s = first - start
    result.e2e_s = last - start
    if result.num_output_tokens == 0:
        result.num_output_tokens = num_text_events  # a server without usage: one token per event
    return result


def _choice_text(choice: dict[str, object], chat: bool) -> str:
    if chat:
        delta = choice.get("delta")
        return str(delta.get("content") or "") if isinstance(delta, dict) else ""
    return str(choice.get("text") or "")
