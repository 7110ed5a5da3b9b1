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
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import Protocol

from worker.engine.constraint import TokenConstraint
from worker.engine.cpu_cores import pin_current_thread
from worker.engine.outputs import Capacity, EngineStats, RequestOutput
from worker.engine.sampling_params import SamplingParams
from worker.engine.tenant_share import TenantShare
from worker.service.prepare import PreparedRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddCommand:
    request: PreparedRequest
    output_token_ids: tuple[int, ...] = ()  # already sent, for a resumed request
    share: TenantShare | None = None  # an internal request's tenant, from its tenant stream


@dataclass(frozen=True)
class AbortCommand:
    req_id: str


class ServedEngine(Protocol):
    """What the service needs of an engine (``worker.engine.engine.Engine``)."""

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    priority: int = 0, arrival_time: float | None = None,
                    output_token_ids: SequenceOf[int] = (),
                    constraint: TokenConstraint | None = None,
                    share: TenantShare | None = None) -> None: ...
    def abort(self, req_id: str) -> None: ...
    def has_unfinished(self) -> bool: ...
    def step(self) -> list[RequestOutput]: ...
    def capacity(self) -> Capacity: ...
    def stats(self) -> EngineStats: ...


@dataclass(frozen=True)
class EngineReport:
    """What one turn of the loop produced, delivered in order, with the engine's state after it."""

    capacity: Capacity = field(default_factory=Capacity)
    stats: EngineStats = field(default_factory=EngineStats)
    admitted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (req_id, why)
    outputs: list[RequestOutput] = field(default_factory=list)  # empty: no step ran
    fatal: str | None = None  # the engine failed; the loop has stopped


class EngineLoop:
    """Drives ``engine`` from a dedicated thread; ``submit`` is safe to call from any thread."""

    def __init__(
        self, engine: ServedEngine, on_report: Callable[[EngineReport], None], idle_wait_s: float = 0.05,
        cpu_cores: frozenset[int] = frozenset(),
    ) -> None:
        self._engine = engine
        self._cpu_cores = cpu_cores  # the step thread's own cores (cpu_cores.py); empty: not pinned
        self._on_report = on_report
        self._idle_wait_s = idle_wait_s
        self._commands: queue.Queue[AddCommand | AbortCommand | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        # The engine's state after the last turn, read by the I/O side (replaced whole, never mutated).
        self.capacity = engine.capacity()
        self.stats = engine.stats()

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

    def _apply(
        self, command: AddCommand | AbortCommand, admitted: list[str], rejected: list[tuple[str, str]]
    ) -> None:
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
                constraint=req.constraint,
                share=command.share,
            )
        except Exception as exc:  # noqa: BLE001 - a request the engine cannot take fails alone
            rejected.append((req.req_id, str(exc) if isinstance(exc, ValueError) else repr(exc)))
        else:
            admitted.append(req.req_id)

    def _run(self) -> None:
        pin_current_thread(self._cpu_cores)
        try:
            while True:
                commands = self._next_commands()
                admitted: list[str] = []
                rejected: list[tuple[str, str]] = []
                for command in commands:
                    if command is None:
                        return
                    self._apply(command, admitted, rejected)
                outputs = self._engine.step() if self._engine.has_unfinished() else []
                if not (commands or outputs):
                    continue
                self.capacity, self.stats = self._engine.capacity(), self._engine.stats()
                self._on_report(EngineReport(self.capacity, self.stats, admitted, rejected, outputs))
        except Exception as exc:
            log.exception("engine step failed")
            fatal = f"{type(exc).__name__}: {exc}"
            self._on_report(EngineReport(self.capacity, self.stats, fatal=fatal))
