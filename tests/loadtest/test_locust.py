"""The Locust file, headless for a few seconds against the running stack: no failures, custom metrics.

Public and internal users need different keys, so the test adds a second gateway (gateways are
stateless) on the stack's Redis with a keys file holding one key of each class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from busstop.redis_server import free_port
from busstop.stack import LocalStack
from gateway.core.auth import hash_key
from shared.keys import request_stream
from shared.messages import TrafficClass
from tests.stack import MODEL

REPO = Path(__file__).resolve().parents[2]
PUBLIC_KEY = "loadtest-public-key"
INTERNAL_KEY = "loadtest-internal-key"


@dataclass(frozen=True)
class Gateway:
    url: str


@pytest.fixture
def keyed_gateway(stack: LocalStack, tmp_path: Path) -> Iterator[Gateway]:
    keys_file = tmp_path / "keys.json"
    entries = [
        {"sha256": hash_key(PUBLIC_KEY), "tenant": "chat", "traffic_class": "public"},
        {"sha256": hash_key(INTERNAL_KEY), "tenant": "curation", "traffic_class": "internal"},
    ]
    keys_file.write_text(json.dumps({"keys": entries}))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "gateway.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env=stack.child_env({"BUSSTOP_KEYS_FILE": str(keys_file)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = Gateway(f"http://127.0.0.1:{port}")
    try:
        wait_ready(gateway.url, process)
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen[bytes], attempts: int = 240) -> None:
    for _ in range(attempts):
        if process.poll() is not None:
            pytest.fail(f"the gateway exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the gateway at {url} never became ready")


def last_request_id(store: redis.Redis, traffic_class: TrafficClass) -> str:
    """The id of the newest entry ever added to the class's request stream (acked ones may be gone)."""
    name = request_stream(MODEL, traffic_class, 0, "curation")  # the internal key's tenant (batch)
    return str(store.xinfo_stream(name)["last-generated-id"]) if store.exists(name) else "0-0"


def test_mixed_traffic_runs_headless_without_failures(
    keyed_gateway: Gateway, store: redis.Redis, tmp_path: Path
) -> None:
    before = {c: last_request_id(store, c) for c in (TrafficClass.INTERACTIVE, TrafficClass.BATCH)}
    prefix = tmp_path / "locust"
    env = {
        **os.environ,
        "BUSSTOP_LOADTEST_MODEL": MODEL,
        "BUSSTOP_LOADTEST_PUBLIC_KEY": PUBLIC_KEY,
        "BUSSTOP_LOADTEST_INTERNAL_KEY": INTERNAL_KEY,
        "BUSSTOP_LOADTEST_CHAT_MAX_TOKENS": "16",
        "BUSSTOP_LOADTEST_BATCH_MAX_TOKENS": "24",
    }
    done = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless"),
            *("--host", keyed_gateway.url, "--users", "4", "--spawn-rate", "4", "--run-time", "6s"),
            *(
                "--stop-timeout",
                "60",
                "--json-file",
                str(prefix),
                "--only-summary",
                "--exit-code-on-error",
                "1",
            ),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The JSON file is written at exit, after the last request ended (the CSV files lag up to a second).
    entries = {(e["method"], e["name"]): e for e in json.loads(prefix.with_suffix(".json").read_text())}
    expected = [("POST", "chat (stream)"), ("POST", "internal (batch)"), ("TTFT", "chat"), ("ITL", "chat")]
    for key in [*expected, ("E2E", "chat")]:
        assert key in entries, f"no {key} line in {sorted(entries)}"
        assert entries[key]["num_requests"] > 0
    assert all(e["num_failures"] == 0 for e in entries.values())
    assert entries[("TTFT", "chat")]["total_response_time"] > 0
    # The two keys put their requests on different traffic classes' streams.
    for traffic_class, last_id in before.items():
        assert last_request_id(store, traffic_class) != last_id, f"no new {traffic_class} requests"
