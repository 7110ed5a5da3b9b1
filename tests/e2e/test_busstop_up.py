"""`busstop up`: one command starts Redis, workers and the gateway; Ctrl-C stops them, so does a SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from busstop.redis_server import free_port
from shared.messages import ReplyKind
from shared.redis_client import connect_sync
from tests.stack import E2E_ENV, ON_CLUSTER, READY_TIMEOUT_S, reply_events


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_banner(proc: subprocess.Popen[str]) -> str:
    """``busstop up``'s output up to the end of its banner."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    return "".join(lines)


def test_busstop_up_serves_and_ctrl_c_stops_everything() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busstop.cli", "up", "--port", str(port), "--timeout", str(READY_TIMEOUT_S)],
        env={**os.environ, **E2E_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = read_banner(proc)
        assert f"http://127.0.0.1:{port}" in banner, banner
        api_key = re.search(r"public key .*: +(\S+)", banner).group(1)  # type: ignore[union-attr]
        redis_port = int(re.search(r"Redis: +redis://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]

        headers = {"Authorization": f"Bearer {api_key}"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=30)
        assert models.status_code == 200 and "smollm2" in models.text

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (is_listening(port) or is_listening(redis_port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not is_listening(port) and not is_listening(redis_port)
    finally:
        if proc.poll() is None:  # a failed check: still stop the children cleanly
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def status_rows(redis_url: str) -> list[list[str]]:
    """The worker rows of ``busstop status``."""
    out = subprocess.run(
        [sys.executable, "-m", "busstop.cli", "status", "--redis", redis_url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    section = out.split("\n\n")[0].splitlines()
    assert section[0].startswith("workers (") and section[1].split()[:3] == ["WORKER", "MODEL", "TP"], out
    return [line.split() for line in section[2:]]


def test_busstop_up_with_two_workers_serves_every_class_shows_the_pool_and_dies_whole_on_sigkill() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busstop.cli", "up", "--workers", "2", "--port", str(port),
         "--timeout", str(READY_TIMEOUT_S)],
        env={**os.environ, **E2E_ENV, "BUSSTOP_ENGINE_MAX_NUM_SEQS": "2"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        banner = read_banner(proc)
        public = re.search(r"public key +\(interactive traffic\): +(\S+)", banner).group(1)  # type: ignore[union-attr]
        internal = re.search(r"internal key +\(Batch API and priority tier\): +(\S+)", banner).group(1)  # type: ignore[union-attr]
        redis_url = re.search(r"Redis: +(redis://\S+)", banner).group(1)  # type: ignore[union-attr]
        assert "smollm2 on 2 workers" in banner
        url = f"http://127.0.0.1:{port}"

        def chat(key: str, headers: dict[str, str] | None = None) -> httpx.Response:
            body = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a poem."}],
                    "max_tokens": 48, "temperature": 0, "ignore_eos": True}  # fmt: skip
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=180,
                              headers={"Authorization": f"Bearer {key}", **(headers or {})})  # fmt: skip

        with ThreadPoolExecutor(6) as pool:
            load = [pool.submit(chat, public) for _ in range(5)]
            load.append(pool.submit(chat, internal, {"x-busstop-traffic-class": "priority"}))
            busiest = 0
            deadline = time.monotonic() + 60
            rows: list[list[str]] = []
            while (busiest == 0 or len(rows) < 2) and time.monotonic() < deadline:
                rows = status_rows(redis_url)  # the gateway is ready with one worker: the other may load
                assert {row[1] for row in rows} <= {"smollm2"}
                busiest = max((int(row[3]) for row in rows), default=0)  # RUNNING
            assert busiest > 0 and len(rows) == 2
            responses = [f.result() for f in load]
        assert [r.status_code for r in responses] == [200] * 6
        store = connect_sync(redis_url, 5.0, ON_CLUSTER)
        served_by = {
            e.worker_id
            for r in responses
            for e in reply_events(store, r.json()["id"].split("-", 1)[1])
            if e.kind is ReplyKind.ACCEPTED
        }
        store.close()
        assert len(served_by) == 2  # two slots each: both workers served

        children = children_of(proc.pid)
        assert len(children) >= 4  # redis-server, two workers, the gateway
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (alive := {c for c in children if Path(f"/proc/{c}").exists()}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
