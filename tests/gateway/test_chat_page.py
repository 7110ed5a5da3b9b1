"""The chat page in a real headless Chromium against the running stack.

The browser is Debian's ``chromium`` driven by Playwright with ``executable_path`` (Playwright
downloads nothing). Screenshots land in ``artifacts/`` for CI to keep.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import expect, sync_playwright

from shared.keys import worker_pattern
from shared.messages import WorkerHeartbeat

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MODEL = "smollm2"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium")

# Text of at least this many characters: an answer well under way.
LONG_TEXT = re.compile(r"[\s\S]{40,}")

# Records the answer's text length at every DOM change, so the test sees the text grow.
WATCH_ANSWER_JS = """() => {
  window.answerLengths = [];
  const log = document.getElementById("conversation");
  new MutationObserver(() => {
    const bodies = log.querySelectorAll(".msg-assistant .msg-body");
    if (bodies.length) window.answerLengths.push(bodies[bodies.length - 1].textContent.length);
  }).observe(log, { subtree: true, childList: true, characterData: true });
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, stack: Any) -> Iterator[Any]:
    """The chat page, signed in with the stack's key, greedy sampling, default model chosen."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.get_by_label("API key").fill(stack.api_key)
    expect(page.get_by_label("Model")).to_have_value(MODEL, timeout=15_000)
    page.get_by_text("Options").click()
    page.get_by_label("Temperature").fill("0")
    yield page
    context.close()
    assert errors == []


def heartbeats(redis_url: str) -> list[WorkerHeartbeat]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        values = [client.get(key) for key in client.scan_iter(match=worker_pattern(MODEL))]
    finally:
        client.close()
    return [WorkerHeartbeat.model_validate(json.loads(v)) for v in values if v]


def wait_for_heartbeat(redis_url: str, ready: Any, timeout_s: float) -> list[WorkerHeartbeat]:
    """Poll the workers' heartbeats until ``ready(heartbeats)`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    beats = heartbeats(redis_url)
    while not (beats and ready(beats)):
        if time.monotonic() > deadline:
            pytest.fail(f"worker heartbeats never reached the expected state: {beats}")
        time.sleep(0.25)
        beats = heartbeats(redis_url)
    return beats


def test_answer_streams_into_the_page(page: Any) -> None:
    page.evaluate(WATCH_ANSWER_JS)
    prompt = page.get_by_label("Message")
    prompt.fill("What is the capital of France?")
    prompt.press("Enter")

    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".msg-body")).to_contain_text("Paris", timeout=60_000)
    expect(answer).not_to_have_attribute("aria-busy", "true", timeout=60_000)
    lengths = [n for n in page.evaluate("window.answerLengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the answer arrived in one piece: {lengths}"
    assert lengths == sorted(lengths)
    expect(answer.locator(".msg-meta")).to_contain_text("TTFT")
    expect(answer.locator(".msg-meta")).to_contain_text("tok/s")
    expect(page.locator(".msg-user .msg-body")).to_have_text(["What is the capital of France?"])
    expect(prompt).to_be_focused()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"))


def test_stop_cancels_the_request_on_the_worker(page: Any, stack: Any) -> None:
    page.get_by_label("Max tokens").fill("4000")
    # ignore_eos keeps the answer going until Stop, whatever the model would say.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.continue_(
            post_data=json.dumps({**route.request.post_data_json, "ignore_eos": True})
        ),
    )
    prompt = page.get_by_label("Message")
    prompt.fill("Tell me a very long story about a bus.")
    prompt.press("Enter")

    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".msg-body")).to_have_text(LONG_TEXT, timeout=60_000)
    wait_for_heartbeat(stack.redis.url, lambda beats: sum(b.num_running for b in beats) >= 1, timeout_s=30)

    stopped_at = time.time()
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(answer.locator(".msg-meta")).to_contain_text("stopped")
    expect(answer).not_to_have_attribute("aria-busy", "true")
    wait_for_heartbeat(
        stack.redis.url,
        lambda beats: all(b.time > stopped_at and b.num_running == 0 and b.num_waiting == 0 for b in beats),
        timeout_s=30,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-stopped.png"))
