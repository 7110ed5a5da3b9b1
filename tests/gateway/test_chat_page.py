"""The chat page in a real headless Chromium against the running stack.

The browser is Debian's ``chromium`` driven by Playwright with ``executable_path`` (Playwright
downloads nothing). Screenshots land in ``artifacts/`` for CI to keep.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from busstop.stack import LocalStack
from shared.keys import reply_stream, req_id_of_reply_stream
from shared.messages import ReplyKind, WorkerHeartbeat
from tests.stack import MODEL, heartbeats, reply_events

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
STOP_MAX_TOKENS = 400  # within the e2e stack's context window, and long enough to stop midway

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
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack: LocalStack) -> Iterator[Page]:
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


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


def is_idle_since(beats: list[WorkerHeartbeat], since: float) -> bool:
    return bool(beats) and all(b.time > since and b.num_running == 0 and b.num_waiting == 0 for b in beats)


def test_answer_streams_into_the_page(page: Page) -> None:
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


def test_the_conversation_is_kept(page: Page, stack: LocalStack) -> None:
    prompt = page.get_by_label("Message")
    prompt.fill("What is the capital of France?")
    prompt.press("Enter")
    expect(page.locator(".msg-assistant").last).not_to_have_attribute("aria-busy", "true", timeout=60_000)
    first_answer = page.locator(".msg-assistant .msg-body").last.text_content() or ""

    # A reload keeps the conversation; the key stays in this browser's storage, nowhere else.
    page.reload()
    expect(page.locator(".msg-body")).to_have_text(["What is the capital of France?", first_answer])
    assert page.evaluate("localStorage.getItem('busstop.apiKey')") == stack.api_key
    assert page.context.cookies() == []

    # The follow-up question carries the whole conversation.
    expect(page.get_by_label("Model")).to_have_value(MODEL, timeout=15_000)
    with page.expect_request("**/v1/chat/completions") as sent:
        prompt.fill("And what is the capital of Italy?")
        prompt.press("Enter")
    messages = (sent.value.post_data_json or {})["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "What is the capital of France?"),
        ("assistant", first_answer),
        ("user", "And what is the capital of Italy?"),
    ]
    expect(page.locator(".msg-assistant").last).not_to_have_attribute("aria-busy", "true", timeout=60_000)
    expect(page.locator(".msg-assistant .msg-body")).to_have_count(2)


def test_stop_cancels_the_request_on_the_worker(page: Page, store: redis.Redis) -> None:
    page.get_by_label("Max tokens").fill(str(STOP_MAX_TOKENS))
    # ignore_eos keeps the answer going until Stop, whatever the model would say.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.continue_(
            post_data=json.dumps({**route.request.post_data_json, "ignore_eos": True})
        ),
    )
    earlier_replies = set(store.scan_iter(match=reply_stream("*")))
    prompt = page.get_by_label("Message")
    prompt.fill("Tell me a very long story about a bus.")
    prompt.press("Enter")

    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".msg-body")).to_have_text(LONG_TEXT, timeout=60_000)
    wait_until(lambda: sum(b.num_running for b in heartbeats(store)) >= 1, "the worker to report the request")

    stopped_at = time.time()
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(answer.locator(".msg-meta")).to_contain_text("stopped")
    expect(answer).not_to_have_attribute("aria-busy", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-stopped.png"))

    # The worker aborted the request: its reply ends in an abort, and no request is left running.
    (reply,) = set(store.scan_iter(match=reply_stream("*"))) - earlier_replies
    req_id = req_id_of_reply_stream(reply)
    events = wait_until(
        lambda: (e := reply_events(store, req_id)) and e[-1].kind is ReplyKind.DONE and e,
        "the final reply event",
    )
    assert events[-1].finish_reason == "abort"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens < STOP_MAX_TOKENS
    wait_until(lambda: is_idle_since(heartbeats(store), stopped_at), "an idle worker heartbeat after Stop")


def test_a_wrong_key_is_reported(browser: Browser, stack: LocalStack) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack.url + "/")
    expect(page.get_by_role("status")).to_have_text("Enter an API key to start.")
    page.get_by_label("API key").fill("not-a-key")
    expect(page.get_by_role("status")).to_have_text("That API key was not accepted.")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Model")).to_be_disabled()
    page.get_by_label("Message").fill("Hello?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.get_by_label("API key")).to_be_focused()
    context.close()
