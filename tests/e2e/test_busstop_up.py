"""`busstop up`: one command starts Redis, a worker and the gateway; Ctrl-C stops all three."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from busstop.redis_server import free_port
from tests.stack import E2E_ENV, READY_TIMEOUT_S


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}" in banner, banner
        api_key = re.search(r"API key: (\S+)", banner).group(1)  # type: ignore[union-attr]
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
