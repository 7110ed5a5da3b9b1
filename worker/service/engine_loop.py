"""The engine's step loop, alone in its own thread.

This thread is the only caller of the engine: it takes add/abort commands from a queue between steps,
runs ``step()`` while there is work, and hands every step's outputs to the I/O side through a
callback. It never touches Redis, the tokenizer or the network, so a step never waits on I/O.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.engine.engine import Engine

from worker.service.prepare import PreparedRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddCommand:
    request: PreparedRequest
    output_token_ids: tuple[int, ...] = ()  # already sent, for a resumed request


@dataclass(frozen=True)
class AbortCommand:
    req_id: str


@dataclass(frozen=True)
class EngineLoad:
    """A snapshot of the engine's load, taken on the engine thread after each step."""

    num_free_seqs: int = 0
    num_free_pages: int = 0
    page_size: int = 1
    num_running: int = 0
    num_waiting: int = 0
    num_total_pages: int = 0
    num_preemptions: int = 0


@dataclass(frozen=True)
class EngineReport:
    """What one turn of the loop produced, delivered in order."""

    admitted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (req_id, why)
    outputs: list[Any] = field(default_factory=list)  # list[RequestOutput]
    load: EngineLoad = field(default_factory=EngineLoad)
    stats: Any = None  # the engine's EngineStats after this turn, for metrics
    fatal: str | None = None  # the engine failed; the loop has stopped


class EngineLoop:
    """Drives ``engine`` from a dedicated thread; ``submit`` is safe to call from any thread."""

    def __init__(
        self, engine: Engine, on_report: Callable[[EngineReport], None], idle_wait_s: float = 0.05
    ) -> None:
        self._engine = engine
        self._on_report = on_report
        self._idle_wait_s = idle_wait_s
        self._commands: queue.Queue[AddCommand | AbortCommand | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.load = self._snapshot()

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: AddCommand | AbortCommand) -> None:
        self._commands.put(command)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop after the current step; requests still in the engine are simply dropped."""
        self._commands.put(None)
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _snapshot(self) -> EngineLoad:
        cap = self._engine.capacity()
        stats = self._engine.stats()
        return EngineLoad(
            num_free_seqs=cap.num_free_seqs,
            num_free_pages=cap.num_free_pages,
            page_size=cap.page_size,
            num_running=stats.num_running,
            num_waiting=stats.num_waiting,
            num_total_pages=stats.num_total_pages,
            num_preemptions=stats.num_preemptions,
        )

    def _next_commands(self) -> list[AddCommand | AbortCommand | None]:
        commands: list[AddCommand | AbortCommand | None] = []
        if not self._engine.has_unfinished():
            try:  # idle: wait for work instead of spinning
                commands.append(self._commands.get(timeout=self._idle_wait_s))
            except queue.Empty:
                return commands
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: AddCommand | AbortCommand, report: EngineReport) -> None:
        if isinstance(command, AbortCommand):
            with contextlib.suppress(KeyError, ValueError):  # already finished: nothing to abort
                self._engine.abort(command.req_id)
            return
        req = command.request
        try:
            self._engine.add_request(
                req.req_id,
                req.prompt_token_ids,
                req.params,
                priority=req.priority,
                arrival_time=req.arrival_time or None,
                output_token_ids=command.output_token_ids,
            )
        except Exception as exc:  # noqa: BLE001 - a request the engine cannot take fails alone
            report.rejected.append((req.req_id, str(exc) if isinstance(exc, ValueError) else repr(exc)))
        else:
            report.admitted.append(req.req_id)

    def _run(self) -> None:
        try:
            while True:
                commands = self._next_commands()
                report = EngineReport()
                for command in commands:
                    if command is None:
                        return
                    self._apply(command, report)
                outputs = self._engine.step() if self._engine.has_unfinished() else []
                if not (commands or outputs):
                    continue
                self.load = self._snapshot()
                stats = self._engine.stats() if outputs else None
                self._on_report(EngineReport(report.admitted, report.rejected, outputs, self.load, stats))
        except Exception as exc:
            log.exception("engine step failed")
            self._on_report(EngineReport(load=self.load, fatal=f"{type(exc).__name__}: {exc}"))
