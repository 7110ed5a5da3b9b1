"""One stack for the process-fault tests: two workers, the bundled model, a key limited to one request
at a time (a slot that leaks is seen by the next request) and a storm key with room for 64."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import openai
import pytest
import redis

from busstop.stack import LocalStack
from gateway.core.auth import KeyEntry, KeysFile, Limits, hash_key
from shared import keys
from shared.messages import ReplyKind
from tests.stack import MODEL, heartbeats, reply_events, req_id_of_chunk, running_stack

# The heartbeat TTL, then at most one beat until a live worker claims the request; then its prefill,
# which ``FaultsStack.max_stall_s`` adds as measured on this machine.
TAKEOVER_S = keys.HEARTBEAT_TTL_S + 2 * keys.HEARTBEAT_INTERVAL_S
STORM_SLOTS = 64


@dataclass
class FaultsStack:
    stack: LocalStack
    store: redis.Redis
    api_key: str  # max_concurrency 1
    storm_key: str  # max_concurrency STORM_SLOTS
    references: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)  # text, TTFT

    def reference(self, prompt: str, max_tokens: int) -> str:
        """The text of an uninterrupted greedy stream (run once per prompt: greedy is deterministic)."""
        if (prompt, max_tokens) not in self.references:
            started = time.monotonic()
            text, ttft_s = "", 0.0
            for chunk in stream(self.stack.url, self.api_key, prompt, max_tokens):
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft_s = ttft_s or time.monotonic() - started
                    text += chunk.choices[0].delta.content
            self.references[prompt, max_tokens] = (text, ttft_s)
        return self.references[prompt, max_tokens][0]

    def max_stall_s(self, prompt: str, max_tokens: int) -> float:
        """The longest a fault may hold the stream up: the takeover, then the resumed request's prefill
        (its uninterrupted TTFT here, doubled: it also prefills the tokens generated before the fault)."""
        self.reference(prompt, max_tokens)
        return TAKEOVER_S + 2 * self.references[prompt, max_tokens][1]


@pytest.fixture(scope="package")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultsStack]:
    directory = tmp_path_factory.mktemp("faults")
    api_key, storm_key = f"sk-faults-{secrets.token_hex(12)}", f"sk-storm-{secrets.token_hex(12)}"
    entries = [
        KeyEntry(sha256=hash_key(api_key), tenant="faults", limits=Limits(max_concurrency=1)),
        KeyEntry(sha256=hash_key(storm_key), tenant="storm", limits=Limits(max_concurrency=STORM_SLOTS)),
    ]
    (directory / "keys.json").write_text(KeysFile(keys=entries).model_dump_json())
    env = {"BUSSTOP_KEYS_FILE": str(directory / "keys.json")}
    with running_stack(directory / "logs", num_workers=2, env=env) as stack:
        store = stack.redis.client()
        assert len(heartbeats(store)) == 2
        yield FaultsStack(stack, store, api_key, storm_key)
        store.close()


def stream(url: str, api_key: str, prompt: str, max_tokens: int) -> openai.Stream:  # type: ignore[type-arg]
    """A greedy chat stream of exactly ``max_tokens`` tokens."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip


@dataclass
class FaultRun:
    text: str  # what the client received
    longest_stall_s: float  # the longest wait between chunks, counted from the fault
    req_id: str
    holder: subprocess.Popen[bytes]  # the worker that held the request when the fault came


def stream_through_a_fault(
    faults: FaultsStack, prompt: str, max_tokens: int, sig: signal.Signals
) -> FaultRun:
    """Stream ``prompt``, send ``sig`` to the worker holding it after 40 characters, read to the end."""
    text, gaps, last = "", [], time.monotonic()
    holder, req_id = None, ""
    for chunk in stream(faults.stack.url, faults.api_key, prompt, max_tokens):
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if holder is None and len(text) > 40:
            req_id = req_id_of_chunk(chunk.id)
            holder = holder_of(faults.stack, faults.store, req_id)
            holder.send_signal(sig)
            if sig is signal.SIGKILL:
                holder.wait(timeout=30)
            last = time.monotonic()
    assert holder is not None, "the stream ended before the fault"
    return FaultRun(text, max(gaps), req_id, holder)


def holder_of(stack: LocalStack, store: redis.Redis, req_id: str):  # type: ignore[no-untyped-def]
    """The worker process that holds ``req_id`` now (the last ACCEPTED names it)."""
    worker_id = [e.worker_id for e in reply_events(store, req_id) if e.kind is ReplyKind.ACCEPTED][-1]
    (holder,) = [w for w in stack.workers if f"-{w.pid}-" in str(worker_id)]
    return holder


def replace_worker(stack: LocalStack, store: redis.Redis, dead) -> None:  # type: ignore[no-untyped-def]
    """Start a worker in place of the killed ``dead`` and wait until two are live again. From the main
    thread: a worker dies with the thread that started it (``die_with_parent``)."""
    is_gone = lambda: not any(f"-{dead.pid}-" in b.worker_id for b in heartbeats(store))  # noqa: E731
    wait_for(is_gone, 30, "expired heartbeat")
    stack.workers.remove(dead)
    stack.start_worker()
    wait_for(lambda: len(heartbeats(store)) == 2, 240, "second worker")


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.1)
