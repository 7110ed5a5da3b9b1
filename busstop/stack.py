"""The whole stack on one machine: redis-server, one worker on the default model, the gateway.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only ``busstop up``, which
then stops them in order: the gateway (no new requests), the worker (finishes what it runs), Redis.
The end-to-end tests start the same stack through ``LocalStack``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from busstop.redis_server import RedisServer, free_port

DEFAULT_MODEL = "smollm2"


class StackError(RuntimeError):
    """A part of the stack did not start."""


class LocalStack:
    """Start with ``start()`` (or ``with``); ``url`` and ``api_key`` are what a client needs."""

    def __init__(
        self,
        port: int = 8000,
        redis_port: int | None = None,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        num_workers: int = 1,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.host = host
        self.port = port or free_port(host)
        self.api_key = api_key or os.environ.get("BUSSTOP_DEV_API_KEY") or f"sk-dev-{secrets.token_hex(16)}"
        self.redis = RedisServer(port=redis_port)
        self._env = dict(env or {})
        self._log_dir = log_dir
        self._num_workers = num_workers
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, **self._env, **(extra or {})}
        env["BUSSTOP_REDIS_URL"] = self.redis.url
        env.setdefault("BUSSTOP_MODELS", DEFAULT_MODEL)
        env["BUSSTOP_DEV_API_KEY"] = self.api_key
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )

    def start_worker(self, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """One more worker process (``python -m worker``) on the stack's Redis."""
        name = f"worker-{len(self.workers)}"
        worker = self._spawn(name, [sys.executable, "-m", "worker"], self.child_env(env))
        self.workers.append(worker)
        return worker

    def start(self, timeout_s: float = 120.0) -> LocalStack:
        if self.gateway is not None or self.workers:
            raise StackError("the stack is already started")
        try:
            self.redis.start()
            for _ in range(self._num_workers):  # they load the model side by side
                self.start_worker()
            self.gateway = self._spawn(
                "gateway",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "gateway.main:app",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                ],
                self.child_env(),
            )
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until the gateway's /ready answers 200 (Redis up, a live worker per model: one is enough)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in [("gateway", self.gateway), *(("worker", w) for w in self.workers)]:
                if proc is not None and proc.poll() is not None:
                    raise StackError(f"the {name} exited with code {proc.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackError(f"the stack was not ready at {self.url}/ready within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Gateway first, then workers (they finish running requests), then Redis."""
        if self.gateway is not None:
            _terminate(self.gateway, timeout_s)
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            _wait_or_kill(worker, timeout_s)
        self.redis.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _wait_or_kill(proc, timeout_s)


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port (default 8000)")
    parser.add_argument("--redis-port", type=int, default=None, help="Redis port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="the gateway's address (default 127.0.0.1)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the stack to be ready"
    )


def run(args: argparse.Namespace) -> int:
    """``busstop up``: start the stack, print how to reach it, stop it on Ctrl-C (or SIGTERM)."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    stack = LocalStack(
        port=args.port, redis_port=args.redis_port, host=args.host, env={"BUSSTOP_LOG_FORMAT": "text"}
    )
    print("busstop: starting redis-server, a worker (loading the model) and the gateway ...", flush=True)
    try:
        stack.start(timeout_s=args.timeout)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # StackError, or redis-server that would not start
        print(f"busstop up: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"\nbusstop is up\n"
        f"  URL:     {stack.url}  (OpenAI base URL: {stack.url}/v1)\n"
        f"  API key: {stack.api_key}\n"
        f"  model:   {DEFAULT_MODEL}\n"
        f"  Redis:   {stack.redis.url}\n"
        f"Ctrl-C stops all three.\n",
        flush=True,
    )
    status = 0
    try:
        while not stopping:
            failed = [p for p in (stack.gateway, *stack.workers) if p is not None and p.poll() is not None]
            if failed:
                print(f"busstop: a process exited (code {failed[0].returncode}); stopping", file=sys.stderr)
                status = 1
                break
            time.sleep(0.5)
    finally:
        print("busstop: stopping ...", flush=True)
        stack.stop()
    return status
