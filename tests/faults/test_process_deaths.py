"""Faults on real processes: a worker killed mid-stream (anywhere, and inside a multi-byte character)
and a gateway replica killed mid-stream, with the default timings.

Greedy streams of fixed length, so a run that survived a fault can be compared with an uninterrupted
one, byte for byte.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import redis

from busstop.redis_server import free_port
from shared import keys
from shared.messages import ReplyKind
from tests.faults.conftest import (
    FaultsStack,
    holder_of,
    replace_worker,
    stream,
    stream_through_a_fault,
    wait_for,
)
from tests.stack import MODEL, reply_events, req_id_of_chunk
from worker.loader.load import load_tokenizer, resolve_path
from worker.loader.settings import ModelSettings

NUM_TOKENS = 160
PROMPT = "Write a long poem about rivers, in English, then say it again in Japanese."
EMOJI_PROMPT = "Reply with ten emojis only."  # the bundled model answers with emojis of 3-4 tokens each
EMOJI_TOKENS = 48


def text_of(chunks: openai.Stream) -> str:  # type: ignore[type-arg]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_killed_worker_costs_a_short_stall_and_not_a_byte(faults: FaultsStack) -> None:
    stack, store = faults.stack, faults.store
    reference = faults.reference(PROMPT, NUM_TOKENS)
    run = stream_through_a_fault(faults, PROMPT, NUM_TOKENS, signal.SIGKILL)
    try:
        assert run.text == reference  # nothing lost, nothing doubled: the same bytes as without the kill
        print(f"longest stall after the kill: {run.longest_stall_s:.2f} s")
        assert run.longest_stall_s <= faults.max_stall_s(PROMPT, NUM_TOKENS)
    finally:
        replace_worker(stack, store, run.holder)  # the next test needs two workers


def _ends_inside_a_character(decode, store: redis.Redis, req_id: str) -> bool:  # type: ignore[no-untyped-def]
    ids = [t for e in reply_events(store, req_id) if e.kind is ReplyKind.DELTA for t in e.token_ids]
    return len(ids) >= 4 and decode(ids).endswith("\ufffd")


def test_a_worker_killed_inside_a_multibyte_character_resumes_at_the_exact_byte(faults: FaultsStack) -> None:
    """The holder is frozen (SIGSTOP) when its last written token ends inside an emoji, checked again
    while frozen, then killed: the new worker must send the rest of that emoji and nothing twice."""
    stack, store = faults.stack, faults.store
    decode = load_tokenizer(resolve_path("default"), ModelSettings().tokenizer_cache_dir).hf.decode
    reference = faults.reference(EMOJI_PROMPT, EMOJI_TOKENS)
    assert len(reference.encode()) > 2 * len(reference)  # mostly multi-byte characters
    killed = []

    def kill_inside_a_character(req_id: str) -> None:
        holder = holder_of(stack, store, req_id)
        while not any(e.kind is ReplyKind.DONE for e in reply_events(store, req_id)):
            if _ends_inside_a_character(decode, store, req_id):
                holder.send_signal(signal.SIGSTOP)
                if _ends_inside_a_character(decode, store, req_id):  # frozen: nothing more gets written
                    holder.send_signal(signal.SIGKILL)
                    holder.wait(timeout=30)
                    killed.append(holder)
                    return
                holder.send_signal(signal.SIGCONT)
            time.sleep(0.002)

    chunks = stream(stack.url, faults.api_key, EMOJI_PROMPT, EMOJI_TOKENS)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    killer = threading.Thread(target=kill_inside_a_character, args=(req_id_of_chunk(first.id),))
    killer.start()
    text = (first.choices[0].delta.content or "") + text_of(chunks)
    killer.join(timeout=300)
    assert killed, "no token boundary inside a character was caught"
    assert text == reference
    stack.workers.remove(killed[0])  # the tests after this one need a single worker


def test_a_killed_gateway_stops_its_work_and_frees_its_slot(faults: FaultsStack) -> None:
    """A second replica serves the stream and is killed; the stack's own gateway serves what follows."""
    stack, store, api_key = faults.stack, faults.store, faults.api_key
    port = free_port()
    replica = stack.start_gateway(port)
    wait_for(lambda: _serves(f"http://{stack.host}:{port}", api_key), 60, "second gateway")
    chunks = stream(f"http://{stack.host}:{port}", api_key, PROMPT, NUM_TOKENS)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    req_id = req_id_of_chunk(first.id)
    (inflight,) = store.scan_iter(match=keys.ratelimit_key("*", "inflight"))
    assert store.zscore(inflight, req_id) is not None
    replica.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    replica.wait(timeout=30)
    while not any(e.kind is ReplyKind.DONE for e in reply_events(store, req_id)):
        assert time.monotonic() - killed_at < 10, "the worker went on generating"
        time.sleep(0.05)
    stopped_after = time.monotonic() - killed_at
    done = [e for e in reply_events(store, req_id) if e.kind is ReplyKind.DONE][-1]
    assert done.finish_reason == "abort" and done.usage is not None
    assert done.usage.completion_tokens < NUM_TOKENS
    print(f"worker stopped {stopped_after:.2f} s after the gateway died")
    assert stopped_after <= 2.0

    # The slot of the dead gateway's request frees itself, and the key (limit 1) serves again.
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=api_key, max_retries=0)
    while True:
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            break
        except openai.RateLimitError:
            assert time.monotonic() - killed_at < 10, "the dead gateway's slot was not freed"
            time.sleep(0.25)
    freed_after = time.monotonic() - killed_at
    print(f"slot free {freed_after:.2f} s after the gateway died")
    assert reply.choices[0].message.content
    assert freed_after <= 10.0


def _serves(url: str, api_key: str) -> bool:
    try:
        openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0).models.list()
        return True
    except openai.APIConnectionError:
        return False


def _sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event id, content) of each content chunk of a chat stream."""
    event_id = ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif line.startswith("data: {"):
            choices = json.loads(line.removeprefix("data: "))["choices"]
            if choices and choices[0]["delta"].get("content"):
                yield event_id, choices[0]["delta"]["content"]


def test_a_stream_cut_by_a_gateway_death_resumes_byte_exact_on_another_replica(faults: FaultsStack) -> None:
    stack, api_key = faults.stack, faults.api_key
    reference = faults.reference(PROMPT, NUM_TOKENS)
    port = free_port()
    replica = stack.start_gateway(port)
    wait_for(lambda: _serves(f"http://{stack.host}:{port}", api_key), 60, "second gateway")
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": NUM_TOKENS,
        "temperature": 0, "stream": True, "ignore_eos": True,
    }  # fmt: skip
    text, last_id = "", ""
    replica_url = f"http://{stack.host}:{port}/v1/chat/completions"
    with httpx.stream("POST", replica_url, json=body, headers=headers, timeout=120) as cut:
        for event_id, content in _sse(cut):
            text, last_id = text + content, event_id
            if len(text) > 40:
                replica.send_signal(signal.SIGKILL)
                break
    replica.wait(timeout=30)
    completion_id = last_id.split(".")[0]
    url = f"{stack.url}/v1/chat/completions/{completion_id}/stream"
    with httpx.stream("GET", url, headers={**headers, "Last-Event-ID": last_id}, timeout=120) as rest:
        assert rest.status_code == 200
        text += "".join(content for _, content in _sse(rest))
    assert text == reference  # the rest, from the next byte: nothing doubled, nothing missing
