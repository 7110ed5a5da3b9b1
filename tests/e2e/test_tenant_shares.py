"""Tenant shares across two real workers on one Redis: when tenants contend for the pool's slots,
each is admitted in proportion to its weight, whichever worker takes the request."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types.chat import ChatCompletion

from busstop.stack import LocalStack
from gateway.core.auth import KeyClass, KeyEntry, KeysFile, hash_key
from shared import keys
from shared.messages import ReplyEvent, ReplyKind
from tests.stack import MODEL, heartbeats, running_stack

SLOTS_PER_WORKER = 4
NUM_PER_TENANT = 24
BLOCKER_TOKENS = 2048  # streams that hold every slot until the floods have queued up, then hang up


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("tenant-shares")
    tenants = {"distill": 2.0, "curation": 1.0, "evals": 1.0}
    api_keys = {t: f"sk-{t}-{secrets.token_hex(12)}" for t in (*tenants, "web")}
    entries = [KeyEntry(sha256=hash_key(api_keys[t]), tenant=t, traffic_class=KeyClass.INTERNAL, weight=w)
               for t, w in tenants.items()]  # fmt: skip
    entries.append(KeyEntry(sha256=hash_key(api_keys["web"]), tenant="web", traffic_class=KeyClass.PUBLIC))
    (directory / "keys.json").write_text(KeysFile(keys=entries).model_dump_json())
    env = {"BUSSTOP_KEYS_FILE": str(directory / "keys.json"),
           "BUSSTOP_ENGINE_MAX_NUM_SEQS": str(SLOTS_PER_WORKER)}  # fmt: skip
    with running_stack(directory / "logs", num_workers=2, env=env) as stack:
        yield stack, api_keys


def ask(stack: LocalStack, api_key: str, max_tokens: int) -> ChatCompletion:
    """A batch-class completion of exactly ``max_tokens`` tokens."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=api_key, max_retries=0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=max_tokens,
        temperature=0, extra_body={"ignore_eos": True}, extra_headers={"x-busstop-traffic-class": "batch"},
    )  # fmt: skip


def block(stack: LocalStack, api_key: str, release: threading.Event, traffic_class: str = "batch") -> int:
    """A stream that holds a slot until ``release``, then hangs up; the tokens it read."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=api_key, max_retries=0)
    seen = 0
    headers = {} if traffic_class == "interactive" else {"x-busstop-traffic-class": traffic_class}
    with client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=BLOCKER_TOKENS,
        temperature=0, stream=True, extra_body={"ignore_eos": True}, extra_headers=headers,
    ) as chunks:  # fmt: skip
        for chunk in chunks:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if release.is_set():
                break
    return seen


def req_id_of(done: ChatCompletion) -> str:
    return done.id.split("-", 1)[1]


def test_contending_tenants_are_admitted_by_weight_across_two_workers(
    weighted: tuple[LocalStack, dict[str, str]],
) -> None:
    stack, api_keys = weighted
    store = stack.redis.client()
    with ThreadPoolExecutor(max_workers=2 * NUM_PER_TENANT + 2 * SLOTS_PER_WORKER) as pool:
        # Fill every slot of both workers with interactive streams first (a batch tenant's would lose
        # slots to the floods' tenants, below their share), so the floods queue up and contend.
        release = threading.Event()
        blockers = [pool.submit(block, stack, api_keys["web"], release, "interactive")
                    for _ in range(2 * SLOTS_PER_WORKER)]
        wait_until(lambda: sum(b.num_running for b in heartbeats(store)) == 2 * SLOTS_PER_WORKER)
        order = ["distill", "curation"] * NUM_PER_TENANT
        floods = [pool.submit(ask, stack, api_keys[t], 8) for t in order]
        wait_until(lambda: all(store.xlen(keys.request_stream(MODEL, "batch", 0, t)) == NUM_PER_TENANT
                               for t in ("distill", "curation")))  # fmt: skip
        assert sum(b.num_running for b in heartbeats(store)) == 2 * SLOTS_PER_WORKER  # still blocked
        release.set()  # the blockers hang up: their slots free at once, and the floods contend for them
        assert all(0 < b.result(timeout=300) < BLOCKER_TOKENS for b in blockers)
        req_ids = {req_id_of(f.result(timeout=300)): t for f, t in zip(floods, order, strict=True)}
    admitted: list[tuple[str, str, str]] = []  # (admission time as a stream id, tenant, worker)
    for req_id, tenant in req_ids.items():
        entries = store.xrange(keys.reply_stream(req_id))
        first = ReplyEvent.model_validate_json(entries[0][1]["data"])
        assert first.kind is ReplyKind.ACCEPTED and first.worker_id
        admitted.append((entries[0][0], tenant, first.worker_id))
    admitted.sort(key=lambda a: tuple(int(p) for p in a[0].split("-")))
    first_half = Counter(tenant for _, tenant, _ in admitted[:NUM_PER_TENANT])
    # Weights 2:1 over the first 24 admissions while both queued: 16 and 8, give or take one pick
    # per worker (each picks on its own as its slots free up).
    assert abs(first_half["distill"] - 16) <= 2 and abs(first_half["curation"] - 8) <= 2, first_half
    assert len({worker for *_, worker in admitted}) == 2  # both workers took flood requests
    store.close()


def test_the_charge_is_settled_to_the_tokens_served(weighted: tuple[LocalStack, dict[str, str]]) -> None:
    stack, api_keys = weighted
    store = stack.redis.client()
    counters = keys.virtual_tokens_key(MODEL, "batch")
    before = {t: float(v) for t, v in store.hgetall(counters).items()}
    done = ask(stack, api_keys["curation"], 5)
    assert done.usage is not None
    # Nobody else is queued, so it returns from idle level with the most served tenant; then pays for
    # exactly the tokens it took (charged the gateway's estimate, settled to the usage).
    start = max(before.values(), default=0.0)
    expected = start + done.usage.prompt_tokens + done.usage.completion_tokens
    assert float(store.hget(counters, "curation")) == pytest.approx(expected)
    store.close()


def test_a_tenant_with_no_slot_takes_one_from_a_tenant_holding_them_all(
    weighted: tuple[LocalStack, dict[str, str]],
) -> None:
    """A batch tenant's streams hold every slot of both workers for minutes: another tenant's request of
    the same class still runs now, on a slot taken from them (preempted, it resumes later)."""
    stack, api_keys = weighted
    store = stack.redis.client()
    with ThreadPoolExecutor(max_workers=2 * SLOTS_PER_WORKER + 1) as pool:
        release = threading.Event()
        blockers = [pool.submit(block, stack, api_keys["evals"], release)
                    for _ in range(2 * SLOTS_PER_WORKER)]
        wait_until(lambda: sum(b.num_running for b in heartbeats(store)) == 2 * SLOTS_PER_WORKER)
        done = ask(stack, api_keys["curation"], 8)
        assert done.usage is not None and done.usage.completion_tokens == 8
        assert not any(b.done() for b in blockers)  # they still hold the rest
        release.set()
        assert all(0 < b.result(timeout=300) < BLOCKER_TOKENS for b in blockers)
    store.close()
