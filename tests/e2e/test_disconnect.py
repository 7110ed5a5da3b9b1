"""A client that leaves mid-stream: the gateway cancels, the engine aborts and frees every page."""

from __future__ import annotations

import json
import time

import httpx
import redis

from busstop.stack import LocalStack
from shared.messages import ReplyKind
from tests.stack import MODEL, heartbeats, reply_events, req_id_of_chunk


def test_a_disconnected_stream_is_aborted_and_its_pages_freed(stack: LocalStack, store: redis.Redis) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    chunk_ids: list[str] = []
    url = f"{stack.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunk_ids.append(json.loads(line[len("data: ") :])["id"])
            if len(chunk_ids) >= 4:
                break  # leaving the block closes the connection mid-stream
    req_id = req_id_of_chunk(chunk_ids[0])

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        beats = heartbeats(store)
        events = reply_events(store, req_id)
        is_done = events and events[-1].kind is ReplyKind.DONE
        is_idle = beats and all(b.num_running == 0 and b.num_free_pages == b.num_total_pages for b in beats)
        if is_done and is_idle:
            break
        time.sleep(0.2)
    assert events[-1].kind is ReplyKind.DONE and events[-1].finish_reason == "abort"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens < 400
    assert [(b.num_running, b.num_waiting, b.num_free_pages) for b in beats] == [
        (0, 0, b.num_total_pages) for b in beats
    ]
