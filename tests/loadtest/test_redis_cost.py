"""The Redis-cost CLI against the running stack: a short run, commands and Redis CPU per token."""

from __future__ import annotations

import re

from busstop.stack import LocalStack
from tests.loadtest.test_bench import run_module
from tests.stack import MODEL


def test_a_short_run_prints_commands_per_output_token(stack: LocalStack) -> None:
    args = ["--url", stack.url, "--model", MODEL, "--redis", stack.redis.url]
    done = run_module("loadtest.redis_cost", *args, "--concurrency", "2", "--num-requests", "4",
                      "--max-tokens", "8", api_key=stack.api_key)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 requests, 32 output tokens at concurrency 2" in done.stdout
    assert re.search(r"^\s+xread\s+\d+\s+[\d.]+ / token$", done.stdout, re.MULTILINE)
    per_token = float(re.findall(r"([\d.]+) Redis commands per output token", done.stdout)[0])
    assert per_token > 1  # at least the reply write and the gateway's read of each token
    cpu_us = float(re.findall(r"([\d.]+) us of Redis CPU per output token", done.stdout)[0])
    assert cpu_us > 0 and "output tokens/s per Redis core at 100%" in done.stdout
