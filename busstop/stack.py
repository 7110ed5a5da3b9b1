"""The whole stack on one machine: redis-server, N workers on one model, the gateway.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only ``busstop up``, which
then stops them in order: the gateway (no new requests), the workers (finish what they run), Redis;
a SIGKILL of ``busstop up`` takes them down too (``children.py``). Without ``BUSSTOP_KEYS_FILE`` the
stack makes a keys file with two development keys, one of each class, so every traffic class can be
tried at once. The end-to-end tests start the same stack through ``LocalStack``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from busstop.banner import banner, describe_keys
from busstop.children import die_with_parent
from busstop.redis_cluster import LocalRedisCluster
from busstop.redis_server import RedisServer, free_port
from gateway.core.auth import KeyClass, KeyEntry, KeysFile, hash_key
from worker.engine.cpu_cores import available_cores, format_cores, pin_current_thread, split_cores

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
        redis_dir: str | None = None,
        redis_cluster: bool = False,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.host = host
        self.port = port or free_port(host)
        # Redis keeps an append-only file there (a temporary directory if None), so a restart keeps
        # accepted requests, Batch jobs and files' records.
        if redis_dir is not None:
            Path(redis_dir).mkdir(parents=True, exist_ok=True)
        self.redis: RedisServer | LocalRedisCluster = (
            LocalRedisCluster() if redis_cluster else RedisServer(port=redis_port, data_dir=redis_dir)
        )
        self.redis_cluster = redis_cluster
        self._env = dict(env or {})
        # A keys file given by the user is served as it is; otherwise two dev keys, public and internal.
        self.keys_file: str | None = self._env.get("BUSSTOP_KEYS_FILE") or os.environ.get("BUSSTOP_KEYS_FILE")
        self.api_key = api_key or os.environ.get("BUSSTOP_DEV_API_KEY") or f"sk-dev-{secrets.token_hex(16)}"
        self.internal_key = os.environ.get("BUSSTOP_DEV_INTERNAL_KEY") or f"sk-dev-in-{secrets.token_hex(14)}"
        self._dev_keys_dir: tempfile.TemporaryDirectory[str] | None = None
        if self.keys_file is None:
            self._dev_keys_dir = tempfile.TemporaryDirectory(prefix="busstop-keys-")
            self.keys_file = write_dev_keys(Path(self._dev_keys_dir.name), self.api_key, self.internal_key)
        else:
            self.api_key = self.internal_key = ""  # only the keys file's keys are served
        self._log_dir = log_dir
        self._num_workers = num_workers
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateways: list[subprocess.Popen[bytes]] = []  # more replicas, from ``start_gateway``
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child; ``extra`` wins (a test's second gateway may bring its own keys)."""
        env = {**os.environ, **self._env, "BUSSTOP_KEYS_FILE": str(self.keys_file), **(extra or {})}
        env["BUSSTOP_REDIS_URL"] = self.redis.url
        env["BUSSTOP_REDIS_CLUSTER"] = "true" if self.redis_cluster else "false"
        env.setdefault("BUSSTOP_MODELS", DEFAULT_MODEL)
        env.pop("BUSSTOP_DEV_API_KEY", None)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        return subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl runs between fork and exec
        )

    def start_worker(self, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """One more worker process (``python -m worker``) on the stack's Redis."""
        name = f"worker-{len(self.workers)}"
        worker = self._spawn(name, [sys.executable, "-m", "worker"], self.child_env(env))
        self.workers.append(worker)
        return worker

    def start_gateway(self, port: int) -> subprocess.Popen[bytes]:
        """One more gateway replica on ``port``, on the same Redis, keys and models."""
        name = f"gateway-{len(self.gateways) + 1}"
        gateway = self._spawn(name, _gateway_args(self.host, port), self.child_env())
        self.gateways.append(gateway)
        return gateway

    def start(self, timeout_s: float = 120.0) -> LocalStack:
        if self.gateway is not None or self.workers:
            raise StackError("the stack is already started")
        try:
            self.redis.start()
            for _ in range(self._num_workers):  # they load the model side by side
                self.start_worker()
            self.gateway = self._spawn("gateway", _gateway_args(self.host, self.port), self.child_env())
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
        for gateway in (self.gateway, *self.gateways):
            if gateway is not None:
                _terminate(gateway, timeout_s)
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            _wait_or_kill(worker, timeout_s)
        self.redis.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._dev_keys_dir is not None:
            self._dev_keys_dir.cleanup()
            self._dev_keys_dir = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _gateway_args(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "gateway.main:app", "--host", host, "--port", str(port)]


def write_dev_keys(directory: Path, public_key: str, internal_key: str) -> str:
    """A keys file with one public (interactive) and one internal (batch, priority) development key."""
    entries = [
        KeyEntry(sha256=hash_key(public_key), tenant="dev", traffic_class=KeyClass.PUBLIC),
        KeyEntry(sha256=hash_key(internal_key), tenant="dev-internal", traffic_class=KeyClass.INTERNAL),
    ]
    path = directory / "dev-keys.json"
    path.write_text(KeysFile(keys=entries).model_dump_json(indent=2))
    return str(path)


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


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``busstop up``'s options; each defaults to its ``BUSSTOP_*`` variable, then to the built-in value."""
    env = os.environ.get
    kv_bytes = _env_int("BUSSTOP_MODEL_KV_CACHE_BYTES", 256 * 1024 * 1024)
    parser.add_argument("--port", type=int, default=_env_int("BUSSTOP_PORT", 8000),
                        help="the gateway's port (BUSSTOP_PORT; default %(default)s)")
    parser.add_argument("--redis-port", type=int, default=None, help="Redis port (default: a free one)")
    parser.add_argument("--redis-dir", default=env("BUSSTOP_REDIS_DIR", "data/redis"),
                        help="Redis's append-only file, kept across restarts (BUSSTOP_REDIS_DIR; "
                             "default %(default)s)")
    parser.add_argument("--redis-cluster", action="store_true",
                        default=env("BUSSTOP_REDIS_CLUSTER", "") not in ("", "0", "false"),
                        help="a local Redis Cluster of 3 primaries and 3 replicas instead of one Redis, "
                             "fresh each time (BUSSTOP_REDIS_CLUSTER)")
    parser.add_argument("--host", default=env("BUSSTOP_HOST", "127.0.0.1"),
                        help="the gateway's address (BUSSTOP_HOST; default %(default)s)")
    parser.add_argument("--workers", type=int, default=_env_int("BUSSTOP_WORKERS", 1),
                        help="worker processes on the same streams (BUSSTOP_WORKERS; default %(default)s)")
    parser.add_argument("--model", default=env("BUSSTOP_MODEL_PATH", "default"),
                        help="a .gguf file or a Hugging Face checkpoint directory (BUSSTOP_MODEL_PATH; "
                             "default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default=env("BUSSTOP_MODEL_DTYPE", "auto"),
                        choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights and KV cache dtype (BUSSTOP_MODEL_DTYPE; default %(default)s)")
    parser.add_argument("--kv-cache", type=float, default=kv_bytes / 2**30, metavar="GIB",
                        help="KV cache per worker, GiB (BUSSTOP_MODEL_KV_CACHE_BYTES; default %(default)g)")
    parser.add_argument("--tensor-parallel-size", type=int,
                        default=_env_int("BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE", 1),
                        help="ranks per worker (BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE; default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the stack to be ready (default %(default)g)")  # fmt: skip


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """The workers' settings from ``busstop up``'s options; a bad one is a ``ValueError`` (one line)."""
    if args.workers < 1 or args.tensor_parallel_size < 1 or args.kv_cache <= 0:
        raise ValueError("--workers and --tensor-parallel-size must be >= 1, --kv-cache > 0")
    if args.model != "default":
        path = Path(args.model)
        if not (path.is_file() and path.suffix == ".gguf") and not (path / "config.json").is_file():
            raise ValueError(f"--model {args.model}: neither a .gguf file nor a directory with config.json")
    name = os.environ.get("BUSSTOP_MODEL_NAME") or (
        DEFAULT_MODEL if args.model == "default" else Path(args.model).name.removesuffix(".gguf")
    )
    return {
        "BUSSTOP_LOG_FORMAT": "text",
        "BUSSTOP_MODEL_PATH": args.model,
        "BUSSTOP_MODEL_NAME": name,
        "BUSSTOP_MODELS": name,
        "BUSSTOP_MODEL_DTYPE": args.dtype,
        "BUSSTOP_MODEL_KV_CACHE_BYTES": str(int(args.kv_cache * 2**30)),
        "BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE": str(args.tensor_parallel_size),
    }


def pin_cpu_layout(args: argparse.Namespace, env: dict[str, str]) -> str | None:
    """On a CPU stack of one worker: the engine's step thread gets cores of its own (set in ``env``) and
    this process, hence Redis, the gateway and the worker's I/O side, the rest. Returns what was done,
    or None where nothing was pinned (a GPU, several workers, TP, one core, or cores set by hand)."""
    device = os.environ.get("BUSSTOP_MODEL_DEVICE", "auto")
    on_cpu = device == "cpu" or (device == "auto" and not Path("/dev/nvidiactl").exists())
    if not on_cpu or args.workers != 1 or args.tensor_parallel_size != 1 or \
            os.environ.get("BUSSTOP_ENGINE_CPU_CORES") is not None:
        return None
    engine, io = split_cores(available_cores())
    if engine == io:
        return None
    env["BUSSTOP_ENGINE_CPU_CORES"] = format_cores(engine)
    pin_current_thread(io)
    return f"engine on cores {format_cores(engine)}, the rest on {format_cores(io)}"


STATE_FILE = Path.home() / ".cache" / "busstop" / "up.json"  # where `busstop status` finds the stack


def run(args: argparse.Namespace) -> int:
    """``busstop up``: start the stack, print how to reach it, stop it on Ctrl-C (or SIGTERM)."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    env = worker_env(args)  # ValueError: one line, nothing started
    layout = pin_cpu_layout(args, env)
    stack = LocalStack(
        port=args.port, redis_port=args.redis_port, host=args.host, env=env, num_workers=args.workers,
        redis_dir=args.redis_dir, redis_cluster=args.redis_cluster,
    )
    if not stack.api_key:
        describe_keys(str(stack.keys_file))  # a bad keys file is one line, before anything starts
    print(f"busstop: starting redis-server, {args.workers} worker(s) (loading {env['BUSSTOP_MODEL_NAME']}) "
          f"and the gateway{f' ({layout})' if layout else ''} ...", flush=True)  # fmt: skip
    try:
        stack.start(timeout_s=args.timeout)
    except KeyboardInterrupt:
        stack.stop()
        return 130
    except RuntimeError as exc:  # StackError, or redis-server that would not start
        print(f"busstop up: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"redis_url": stack.redis.url, "url": stack.url, "pid": os.getpid()}))
    print(banner(stack.url, stack.redis.url, env["BUSSTOP_MODEL_NAME"], args.workers, stack.api_key,
                 stack.internal_key, str(stack.keys_file)), flush=True)  # fmt: skip
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
        STATE_FILE.unlink(missing_ok=True)
    return status
