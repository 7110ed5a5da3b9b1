"""A worker frozen mid-stream (SIGSTOP) while another is live, and clients that leave in a storm.

A frozen worker looks dead once its heartbeat expires: its request moves to the live worker, and when
the frozen one wakes (SIGCONT) its stale writes are refused, it drops the request, frees its pages and
serves again. Fifty clients that hang up after a few tokens leave no running sequence, page, slot or
pending message behind.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from shared import keys
from tests.faults.conftest import (
    STORM_SLOTS,
    FaultsStack,
    stream,
    stream_through_a_fault,
    wait_for,
)
from tests.faults.test_process_deaths import NUM_TOKENS, PROMPT, text_of
from tests.stack import MODEL, heartbeats, reply_events

NUM_STORM_CLIENTS = 50


def is_idle(faults: FaultsStack) -> bool:
    """Every worker idle with all its pages free, no key holding a slot, no request message pending."""
    store = faults.store
    beats = heartbeats(store)
    if len(beats) != 2 or any(b.num_running or b.num_waiting for b in beats):
        return False
    if any(b.num_free_pages != b.num_total_pages for b in beats):
        return False
    if any(store.zcard(k) for k in store.scan_iter(match=keys.ratelimit_key("*", "inflight"))):
        return False
    for name in store.scan_iter(match=keys.REQUEST_STREAMS_PATTERN):
        groups = store.xinfo_groups(name)
        if any(g["pending"] for g in groups):
            return False
    return True


def test_a_frozen_worker_loses_its_request_cleanly_and_serves_again(faults: FaultsStack) -> None:
    stack, store = faults.stack, faults.store
    reference = faults.reference(PROMPT, NUM_TOKENS)
    run = stream_through_a_fault(faults, PROMPT, NUM_TOKENS, signal.SIGSTOP)
    holder, req_id = run.holder, run.req_id
    try:
        assert run.text == reference
        print(f"longest stall after the freeze: {run.longest_stall_s:.2f} s")
        assert run.longest_stall_s <= faults.max_stall_s(PROMPT, NUM_TOKENS)
    finally:
        holder.send_signal(signal.SIGCONT)  # the next tests need it awake
    wait_for(lambda: len(heartbeats(store)) == 2, 30, "heartbeat from the woken worker")
    wait_for(lambda: is_idle(faults), 30, "idle pool")  # the woken worker dropped the request
    seqs = [e.seq for e in reply_events(store, req_id)]
    assert seqs == list(range(len(seqs)))  # no stale event from the woken worker got in
    assert holder.poll() is None
    assert text_of(stream(stack.url, faults.api_key, PROMPT, 8))  # and the pool serves


async def _leave_after_a_few_tokens(client: httpx.AsyncClient, i: int) -> int:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": f"Tell story number {i}."}],
        "max_tokens": 200, "stream": True, "ignore_eos": True,
    }  # fmt: skip
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content"' in line:
                seen += 1
                if seen == 3:
                    return seen  # closing the stream mid-answer hangs up
    return seen


def test_a_storm_of_clients_that_hang_up_leaves_nothing_behind(faults: FaultsStack) -> None:
    assert NUM_STORM_CLIENTS <= STORM_SLOTS
    wait_for(lambda: is_idle(faults), 60, "idle pool before the storm")

    async def storm() -> list[int]:
        headers = {"Authorization": f"Bearer {faults.storm_key}"}
        async with httpx.AsyncClient(base_url=faults.stack.url, headers=headers, timeout=300) as client:
            clients = (_leave_after_a_few_tokens(client, i) for i in range(NUM_STORM_CLIENTS))
            return await asyncio.gather(*clients)

    started = time.monotonic()
    assert asyncio.run(storm()) == [3] * NUM_STORM_CLIENTS
    wait_for(lambda: is_idle(faults), 10, "idle pool after the storm")
    print(f"storm of {NUM_STORM_CLIENTS} and cleanup took {time.monotonic() - started:.1f} s")
    assert text_of(stream(faults.stack.url, faults.api_key, PROMPT, 8))
