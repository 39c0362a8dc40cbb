"""An in-memory ToolBackend for exercising transports without the tool runtime.

It behaves like the runtime where transports can tell the difference: it
answers every call with a `CallOutcome` envelope, refuses bad arguments with
a validation outcome (never an exception), raises `UnknownTool`, reports
progress on the caller's loop, keeps a bounded queue in front of a one-slot
tool, and honours `cancel()`: a queued call is removed before it starts, a
running one has its process group killed, and both are counted as
cancelled. Nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from actors.api import Caller, ProgressSink, StartedScan, ToolInfo, UnknownTool
from actors.results import CallOutcome, ErrorType

OUTPUT_SCHEMA: dict[str, Any] = CallOutcome.model_json_schema()

_ANNOTATIONS = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": True}


def _schema(extra: dict[str, Any] | None = None, required: tuple[str, ...] = ("target",)) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "target": {"type": "string", "description": "Lab host to look at, e.g. 10.0.0.5."},
        "extra_args": {"type": "string", "maxLength": 2048},
    }
    properties.update(extra or {})
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


TOOLS: dict[str, ToolInfo] = {
    info.name: info
    for info in (
        ToolInfo(
            name="probe",
            title="Probe a lab host",
            description="Reports the open ports of one lab host. Pass target as a dotted-quad IPv4 address.",
            input_schema=_schema({"progress": {"type": "array", "items": {"type": "number"}}}),
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
        ToolInfo(
            name="broken",
            title="Always fails",
            description="Runs a tool that exits with status 2, to see how failures look.",
            input_schema=_schema(),
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
        ToolInfo(
            name="hold",
            title="Hold a slot",
            description="Occupies the single slot until released or cancelled; later calls queue behind it.",
            input_schema=_schema({"seconds": {"type": "number", "minimum": 0}}),
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
        ToolInfo(
            name="sleeper",
            title="Run a sleeping process",
            description="Starts a process in its own process group that sleeps for the given seconds.",
            input_schema=_schema({"seconds": {"type": "number", "minimum": 0}}),
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
        ToolInfo(
            name="noisy",
            title="Print to stdout",
            description="Writes a line to the server's own stdout, which must never reach the protocol stream.",
            input_schema=_schema(),
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
        ToolInfo(
            name="stats",
            title="Backend counters",
            description="Returns what the backend has counted so far.",
            input_schema={"type": "object", "properties": {}},
            output_schema=OUTPUT_SCHEMA,
            annotations=_ANNOTATIONS,
        ),
    )
}


@dataclass(eq=False)
class _Call:
    call_id: str
    tool: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    pid: int | None = None


class FakeBackend:
    """Implements `actors.api.ToolBackend`."""

    def __init__(self, *, hold_slots: int = 1, max_queue: int = 4) -> None:
        self.counts: Counter[str] = Counter()
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.callers: list[Caller | None] = []  # who each call said it came from
        self.cancel_requests: list[str] = []
        self.killed_pids: list[int] = []
        self.started: list[str] = []
        self.accept_cancel = True
        self.raise_on: set[str] = set()
        self._hold_slots = hold_slots
        self._max_queue = max_queue
        self._slot: asyncio.Semaphore | None = None
        self._release: asyncio.Event | None = None
        self._waiting = 0
        self._calls: dict[str, _Call] = {}

    # -- ToolBackend

    def list_tools(self) -> list[ToolInfo]:
        return list(TOOLS.values())

    def cancel(self, call_id: str) -> bool:
        self.cancel_requests.append(call_id)
        call = self._calls.get(call_id)
        if call is None or not self.accept_cancel or call.cancelled.is_set():
            return False
        call.cancelled.set()
        self.counts["cancelled"] += 1
        if call.pid is not None:
            self._kill_group(call.pid)
        return True

    async def astart(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> StartedScan:
        """Like the runtime's: an unknown tool raises here; the call runs on as a task (no scan is kept)."""
        if tool not in TOOLS:
            self.callers.append(caller)
            raise UnknownTool(tool, list(TOOLS))
        call_id = call_id or f"fake-{len(self.calls)}"
        task = asyncio.ensure_future(self.acall(tool, arguments, call_id=call_id, progress=progress, caller=caller))
        return StartedScan(scan_id=None, call_id=call_id, outcome=task)

    async def acall(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> CallOutcome:
        self.callers.append(caller)
        if tool not in TOOLS:
            raise UnknownTool(tool, list(TOOLS))
        call_id = call_id or f"fake-{len(self.calls)}"
        self.calls.append((tool, dict(arguments), call_id))
        if tool in self.raise_on:
            raise RuntimeError("backend exploded")
        if tool != "stats":
            problem = self._invalid(arguments)
            if problem is not None:
                self.counts["validation"] += 1
                return CallOutcome.failure(tool, call_id, ErrorType.VALIDATION, problem)
        call = _Call(call_id, tool)
        self._calls[call_id] = call
        try:
            outcome = await getattr(self, "_" + tool)(call, arguments, progress)
        finally:
            self._calls.pop(call_id, None)
        if outcome.error_type is not ErrorType.CANCELLED:
            self.counts["ok" if outcome.ok else "error"] += 1
        return outcome

    # -- test controls

    def release(self) -> None:
        """Let every `hold` call that is running or queued finish."""
        self._release_event().set()

    # -- tools

    async def _probe(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        self._start(call)
        for step, value in enumerate(args.get("progress", [10, 5, 50, 50, 100])):
            if progress is not None:
                progress(value, 100.0, f"step {step}")
        return CallOutcome(
            tool="probe",
            call_id=call.call_id,
            ok=True,
            target=args["target"],
            resolved_targets=[args["target"]],
            argv=["probe", args["target"]],
            returncode=0,
            duration_sec=0.01,
            result={"hosts": [{"address": args["target"], "ports": [{"port": 22, "state": "open"}]}]},
        )

    async def _broken(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        self._start(call)
        return CallOutcome.failure(
            "broken",
            call.call_id,
            ErrorType.EXECUTION,
            "the tool exited with status 2",
            target=args["target"],
            returncode=2,
            stderr="broken: simulated failure\n",
        )

    async def _hold(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        if self._waiting >= self._max_queue:
            return CallOutcome.failure(
                "hold", call.call_id, ErrorType.RESOURCE_EXHAUSTED, "queue is full", retry_after_sec=1.0
            )
        slot = self._slot_semaphore()
        if slot.locked() and progress is not None:
            progress(0, None, "queued")
        self._waiting += 1
        try:
            acquired = await _first(slot.acquire(), call.cancelled.wait())
        finally:
            self._waiting -= 1
        if not acquired:
            return self._cancelled(call)  # removed from the queue before it ever started
        try:
            self._start(call)
            if progress is not None:
                progress(1, None, "holding")
            seconds = args.get("seconds")
            released = self._release_event().wait()
            waiters: list[Coroutine[Any, Any, object]] = [released, call.cancelled.wait()]
            if seconds is not None:
                waiters.append(asyncio.sleep(seconds))
            await _first(*waiters)
            if call.cancelled.is_set():
                return self._cancelled(call)
            return CallOutcome(tool="hold", call_id=call.call_id, ok=True, target=args["target"], returncode=0)
        finally:
            slot.release()

    async def _sleeper(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        seconds = float(args.get("seconds", 600))
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"import time; time.sleep({seconds!r})",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        call.pid = proc.pid
        self._start(call)
        if call.cancelled.is_set():
            self._kill_group(proc.pid)
        if progress is not None:
            progress(1, None, f"pid={proc.pid}")
        returncode = await proc.wait()
        if call.cancelled.is_set():
            return self._cancelled(call, returncode=returncode)
        return CallOutcome(
            tool="sleeper",
            call_id=call.call_id,
            ok=returncode == 0,
            target=args["target"],
            returncode=returncode,
            duration_sec=time.monotonic() - started,
        )

    async def _noisy(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        self._start(call)
        print("stray output that must not reach the protocol stream", flush=True)
        return CallOutcome(tool="noisy", call_id=call.call_id, ok=True, target=args["target"], returncode=0)

    async def _stats(self, call: _Call, args: dict[str, Any], progress: ProgressSink | None) -> CallOutcome:
        return CallOutcome(
            tool="stats",
            call_id=call.call_id,
            ok=True,
            result={
                "counts": dict(self.counts),
                "started": list(self.started),
                "cancel_requests": list(self.cancel_requests),
                "killed_pids": list(self.killed_pids),
            },
        )

    # -- internals

    def _invalid(self, args: dict[str, Any]) -> str | None:
        target = args.get("target")
        if not isinstance(target, str) or not target:
            return "target: a lab host (string) is required"
        extra = args.get("extra_args")
        if extra is not None and (not isinstance(extra, str) or len(extra) > 2048):
            return "extra_args: at most 2048 characters"
        return None

    def _start(self, call: _Call) -> None:
        call.started = True
        self.started.append(call.call_id)

    def _cancelled(self, call: _Call, **fields: Any) -> CallOutcome:
        return CallOutcome.failure(call.tool, call.call_id, ErrorType.CANCELLED, "the call was cancelled", **fields)

    def _kill_group(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.killed_pids.append(pid)

    def _slot_semaphore(self) -> asyncio.Semaphore:
        if self._slot is None:
            self._slot = asyncio.Semaphore(self._hold_slots)
        return self._slot

    def _release_event(self) -> asyncio.Event:
        if self._release is None:
            self._release = asyncio.Event()
        return self._release


async def _first(*awaitables: Any) -> bool:
    """Wait for the first awaitable to finish; True if it was the first one given."""
    tasks = [asyncio.ensure_future(aw) for aw in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    winner = tasks[0]
    return winner in done and not winner.cancelled()
