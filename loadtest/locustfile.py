"""Locust load test: public chat streams and internal batch traffic against one busstop gateway.

    BUSSTOP_LOADTEST_PUBLIC_KEY=... BUSSTOP_LOADTEST_INTERNAL_KEY=... \\
        locust -f loadtest/locustfile.py --headless -u 32 -r 4 -t 2m --host http://127.0.0.1:8000

Public users stream chat answers (short prompts, short answers, think time between questions);
internal users send longer non-streaming completions back to back with the internal key, which
the gateway maps to its own traffic class. Besides Locust's per-request lines, every stream
reports two custom metrics, visible in the web UI, the console summary and ``--csv`` files:

- ``TTFT chat``: time from sending the request to the first text;
- ``ITL chat``: each gap between consecutive text events;
- ``E2E chat``: time from sending the request to the last text (Locust's own ``chat (stream)``
  line times the response headers only).

Environment: ``BUSSTOP_LOADTEST_PUBLIC_KEY``, ``BUSSTOP_LOADTEST_INTERNAL_KEY`` (bearer keys; the
internal one defaults to the public one), ``BUSSTOP_LOADTEST_MODEL`` (default ``smollm2``),
``BUSSTOP_LOADTEST_CHAT_MAX_TOKENS`` (64) and ``BUSSTOP_LOADTEST_BATCH_MAX_TOKENS`` (128).
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, constant, events, task

from loadtest.workload import make_prompt

MODEL = os.environ.get("BUSSTOP_LOADTEST_MODEL", "smollm2")
PUBLIC_KEY = os.environ.get("BUSSTOP_LOADTEST_PUBLIC_KEY", "")
INTERNAL_KEY = os.environ.get("BUSSTOP_LOADTEST_INTERNAL_KEY", "") or PUBLIC_KEY
CHAT_MAX_TOKENS = int(os.environ.get("BUSSTOP_LOADTEST_CHAT_MAX_TOKENS", "64"))
BATCH_MAX_TOKENS = int(os.environ.get("BUSSTOP_LOADTEST_BATCH_MAX_TOKENS", "128"))

CHAT_QUESTIONS = (
    "What is the capital of France?",
    "Give me three tips for writing clear emails.",
    "Explain what a bus stop is to a child.",
    "Summarize the plot of a heist movie in two sentences.",
)


def record(metric: str, name: str, value_s: float) -> None:
    """Report one measurement as a Locust request line of its own (times in ms)."""
    events.request.fire(
        request_type=metric,
        name=name,
        response_time=1000 * value_s,
        response_length=0,
        exception=None,
        context={},
    )


class ChatUser(HttpUser):
    """A person at the chat page: a question, a streamed answer, a pause."""

    weight = 3
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        if PUBLIC_KEY:
            self.client.headers["Authorization"] = f"Bearer {PUBLIC_KEY}"

    @task
    def chat_stream(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": random.choice(CHAT_QUESTIONS)}],
            "max_tokens": CHAT_MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name="chat (stream)"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            first: float | None = None
            last = start
            done = False
            for line in response.iter_lines(chunk_size=None, decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    response.failure(f"stream error: {chunk['error']}")
                    return
                if not any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                    record("TTFT", "chat", now - start)
                else:
                    record("ITL", "chat", now - last)
                last = now
            if not done:
                response.failure("stream ended without [DONE]")
            elif first is None:
                response.failure("no text in the stream")
            else:
                record("E2E", "chat", last - start)
                response.success()


class BatchUser(HttpUser):
    """An internal job: longer prompts and answers, no streaming, no pause."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        self._rng = random.Random()
        if INTERNAL_KEY:
            self.client.headers["Authorization"] = f"Bearer {INTERNAL_KEY}"

    @task
    def completion(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": make_prompt(self._rng, self._rng.randint(32, 128))}],
            "max_tokens": BATCH_MAX_TOKENS,
        }
        with self.client.post(
            "/v1/chat/completions", json=body, catch_response=True, name="internal (batch)"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            usage = response.json().get("usage") or {}
            if not usage.get("completion_tokens"):
                response.failure("no completion tokens in the answer")
            else:
                response.success()
