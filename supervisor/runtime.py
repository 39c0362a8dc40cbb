"""The embedding API: one object that starts, serves and stops labrecon in-process.

Every transport is built on it, so an embedding program gets exactly what an MCP client gets. A
call is validated on the caller's side first (its DNS look-up on a look-up thread, with a deadline),
so refused input never touches a mailbox, a breaker or a process. A runtime changes nothing
process-wide unless it owns the process (`Runtime.start(..., owns_process=True)`, as `serve` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from actors.api import Caller, ProgressSink, StartedScan, ToolInfo, UnknownTool
from actors.containment import (
    boot_id,
    end_left_group,
    end_leftovers,
    process_start_ticks,
    set_subreaper,
)
from actors.lookups import Lookups
from actors.policy import Resolver, TargetPolicy
from actors.prepare import PreparedCall, prepare_call
from actors.reply import AsyncReply, Reply, ThreadReply
from actors.results import CallOutcome, ErrorType, InvalidCall
from actors.tool import Call
from actors.tools import TOOL_SPECS
from actors.tools.base import ToolArguments, ToolSpec
from actors.watchdog import Watchdog
from supervisor.audit import AuditLog
from supervisor.config import FaultSettings, Settings, settings_from
from supervisor.metrics import ScanStoreCollector
from supervisor.retrier import Retrier
from supervisor.scans.service import LiveScan, Scans
from supervisor.scans.store import ScanStore, StoreClosed
from supervisor.scope import with_scope
from supervisor.status import ScanStoreStatus, Status
from supervisor.supervisor import Supervisor

logger = logging.getLogger(__name__)


class RuntimeStopped(RuntimeError):
    """An operator query (status, metrics, controls) reached a runtime that has stopped."""


class Runtime:
    """labrecon in-process; the caller waits on each call's reply however suits it.

        from supervisor import Runtime
        with Runtime.start("labrecon.toml") as runtime:
            outcome = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22,80"})
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        owns_process: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.owns_process = owns_process and set_subreaper(True)
        # Owning the process, the runtime also ends its runs if it is killed: a watchdog outlives it for that.
        self.watchdog = Watchdog() if self.owns_process else None
        policy = TargetPolicy(settings.policy, resolver=resolver)
        self.lookups = Lookups(
            policy.resolver, timeout_sec=settings.policy.dns_timeout_sec, limit=settings.policy.dns_concurrency
        )
        # Blocking calls wait on a look-up here, at most its deadline; `acall` settles it first, on the loop.
        self.policy = policy.with_resolver(self.lookups.resolve)
        self.specs = {
            name: TOOL_SPECS[name] for name, tool_settings in settings.tools.items() if tool_settings.enabled
        }
        # Schemas are derived from the specs once: they never change while the runtime lives.
        # Each states the scope it may scan, so a model plans inside it instead of learning it from refusals.
        self._tool_infos = [with_scope(spec.info(), settings.policy) for spec in self.specs.values()]
        self.audit = AuditLog(settings.logging.audit_path) if settings.logging.audit_path else None
        self.scans = Scans(
            ScanStore(settings.scans.path, daemon=_this_process()),
            cancel_call=self.cancel,
            retention_sec=settings.scans.retention_days * 86_400,
            max_scans=settings.scans.max_scans,
            clock=clock,
            on_expired=self.audit.scans_expired if self.audit is not None else None,
            on_started=self.audit.scan_started if self.audit is not None else None,
            on_cancel_requested=self.audit.scan_cancel_requested if self.audit is not None else None,
        )
        self._settle_interrupted()
        self.scans.start_sweeping()
        self.supervisor = Supervisor(
            settings, self.specs, on_escalate=self._escalate, collectors=[ScanStoreCollector(self._scan_store_status)]
        )
        # Every call from admission to answer, each attempt handed to the supervisor, transient failures retried.
        self.retries = Retrier(
            self.supervisor.submit, on_retry=self.supervisor.record_retry, on_refused=self.supervisor.record_refusal
        )
        self._calls: dict[str, str] = {}  # call_id -> tool, for cancellation
        self._calls_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._stopped = False
        # Set when a tool exceeded its restart intensity under on_intensity_exceeded = "escalate".
        self.escalated = threading.Event()
        self.escalation_reason: str | None = None

    # --- life -------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        config: Settings | Mapping[str, Any] | str | Path | None = None,
        *,
        resolver: Resolver | None = None,
        owns_process: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> Runtime:
        """Start from a Settings object, a dict shaped like the TOML file, or a path to one.

        Every run ends the processes it can trace: its group, and what
        descends from its tool. A process a tool detaches by forking twice is
        re-parented away and traced only when this process is a child
        subreaper. With `owns_process` (this process runs nothing else) the
        runtime makes it one (Linux), starts a watchdog process that ends the
        runs should this process be killed, and `stop` ends every child left.
        """
        return cls(settings_from(config), resolver=resolver, owns_process=owns_process, clock=clock)

    def stop(self, grace: float = 10.0) -> None:
        """Admit nothing new, let running calls finish within `grace` seconds, then end them.

        Safe to call from several threads (an escalation and a signal handler,
        say): every caller returns once the one shutdown has finished.
        """
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                self.retries.close()  # calls waiting to be tried again are answered now
                self.supervisor.shutdown(grace)
                if self.watchdog is not None:
                    self.watchdog.close()  # every run has ended: nothing is left for it to end
                if self.owns_process:
                    end_leftovers()  # whatever got past the runs, zombies included
                self.scans.close()  # every call is answered by now, every scan settled
                if self.audit is not None:
                    self.audit.close()

    def _escalate(self, reason: str) -> None:
        """Give up on the whole runtime, gracefully, so a process manager can restart it."""
        self.escalation_reason = reason
        self.stop()
        self.escalated.set()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the tool surface -------------------------------------------------------

    def list_tools(self) -> list[ToolInfo]:
        return list(self._tool_infos)

    def call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        timeout: float | None = None,
        *,
        call_id: str | None = None,
        caller: Caller | None = None,
    ) -> CallOutcome:
        """Run a call and block until it is answered; usable from any thread but an event loop's.

        `timeout` bounds the wait: when it passes, the call is cancelled and its
        `cancelled` answer returned, so nothing is left running behind the caller.
        """
        reply: ThreadReply[CallOutcome] = ThreadReply()
        call_id, _, early = self._submit(
            tool, arguments, reply, self.policy, call_id=call_id, progress=None, caller=caller
        )
        if early is not None:
            return early
        try:
            return reply.wait(timeout)
        except TimeoutError:
            self.cancel(call_id)
            return reply.wait()

    async def acall(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> CallOutcome:
        """Run a call from asyncio. Cancelling the awaiting task cancels the call (and kills its process)."""
        started = await self.astart(tool, arguments, call_id=call_id, progress=progress, caller=caller)
        try:
            return await started.outcome
        except asyncio.CancelledError:
            self.cancel(started.call_id)
            raise

    async def astart(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> StartedScan:
        """Start a call as a scan and return at once; `outcome` completes once the scan is settled.

        Awaiting `outcome` is optional: the scan runs on whether anyone waits, and `scans` reads it
        back by id. Cancel it with `cancel(call_id)` (or `scans.cancel`).
        """
        policy, validated = await self._looked_up(self._spec(tool), arguments)
        loop = asyncio.get_running_loop()
        reply: AsyncReply[CallOutcome] = AsyncReply(loop)
        sink = _on_loop(loop, progress) if progress is not None else None
        call_id, scan_id, early = self._submit(
            tool, arguments, reply, policy, call_id=call_id, progress=sink, caller=caller, validated=validated
        )
        if early is not None:
            reply.resolve(early)
        return StartedScan(scan_id=scan_id, call_id=call_id, outcome=reply.future)

    def cancel(self, call_id: str) -> bool:
        """Cancel a queued or running call; False if no such call is pending."""
        with self._calls_lock:
            tool = self._calls.get(call_id)
        if tool is None:
            return False
        return self.retries.cancel(call_id) or self.supervisor.cancel(tool, call_id)

    # --- operators ----------------------------------------------------------------

    def _settle_interrupted(self) -> None:
        """Scans an earlier life left `working` end as failed/interrupted; what they ran is ended."""
        for left in self.scans.store.interrupt_running(self.scans.now(), alive=_still_running):
            if end_left_group(left.pgid, left.start_ticks, left.home):
                logger.warning(
                    "ended the process group of a scan interrupted by the daemon's death",
                    extra={"scan_id": left.scan_id, "pgid": left.pgid},
                )

    def status(self) -> Status:
        """The supervisor's snapshot of the tools, with the scan store's numbers beside it."""
        self._check_running()
        scans = self._scan_store_status()
        return self.supervisor.status().model_copy(update={"scans": scans})

    def _scan_store_status(self) -> ScanStoreStatus:
        try:
            return ScanStoreStatus.model_validate(self.scans.stats())
        except StoreClosed:  # closed by `stop` meanwhile
            raise RuntimeStopped("the runtime has stopped") from None

    def metrics_text(self) -> str:
        self._check_running()
        return self.supervisor.metrics_text().decode()

    def _check_running(self) -> None:
        if self._stopped:
            raise RuntimeStopped("the runtime has stopped")

    def inject(self, fault: FaultSettings | Mapping[str, Any] | None = None, **fields: Any) -> int:
        """Add a fault rule (same fields as `[[faults]]`); returns its id for `clear_faults`."""
        if fault is None:
            fault = fields
        if not isinstance(fault, FaultSettings):
            try:
                fault = FaultSettings.model_validate(fault)
            except ValidationError as exc:
                raise InvalidCall(_first_error(exc), field="fault") from None
        if fault.tool not in self.specs:
            raise UnknownTool(fault.tool, sorted(self.specs))
        return self.supervisor.inject(fault)

    def faults(self) -> list[dict[str, Any]]:
        return self.supervisor.plan.list()

    def clear_faults(self, rule_id: int | None = None, *, tool: str | None = None) -> int:
        return self.supervisor.clear_faults(rule_id, tool)

    def reset(self, tool: str) -> str:
        """Bring a tool that exceeded its restart intensity back into service."""
        return self._control("reset", tool)

    def restart(self, tool: str) -> str:
        return self._control("restart", tool)

    def force_breaker(self, tool: str, state: str) -> str:
        if state not in ("open", "closed"):
            raise InvalidCall("breaker state must be 'open' or 'closed'", field="state")
        return self._control(f"breaker_{state}", tool)

    def _control(self, action: str, tool: str) -> str:
        self._check_running()
        if tool not in self.specs:
            raise UnknownTool(tool, sorted(self.specs))
        return self.supervisor.control(action, tool)

    # --- internals --------------------------------------------------------------

    def _spec(self, tool: str) -> ToolSpec:
        spec = self.specs.get(tool)
        if spec is None:
            raise UnknownTool(tool, sorted(self.specs))
        return spec

    async def _looked_up(
        self, spec: ToolSpec, arguments: Mapping[str, Any]
    ) -> tuple[TargetPolicy, ToolArguments | None]:
        """The policy for one call from asyncio, with its target's look-up (if any) already settled.

        A call that will be refused anyway (the runtime stopping, arguments that do not validate) looks
        nothing up: names are resolved only for calls that may run.
        """
        if self._stopped or not isinstance(arguments, Mapping):
            return self.policy, None
        try:
            validated = spec.validate_arguments(arguments)  # once: the call is prepared from this
        except InvalidCall:
            return self.policy, None
        name = self.policy.lookup_name(validated.target)
        if name is None:
            return self.policy, validated
        lookup = self.lookups.start(name)
        await lookup.settled()
        return self.policy.with_resolver(lookup.answer), validated

    def _submit(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        reply: Reply[CallOutcome],
        policy: TargetPolicy,
        *,
        call_id: str | None,
        progress: ProgressSink | None,
        caller: Caller | None,
        validated: ToolArguments | None = None,
    ) -> tuple[str, str | None, CallOutcome | None]:
        """Admit a call, or refuse it; (call id, scan id, the refusal's answer or None)."""
        spec = self._spec(tool)
        call_id = call_id or uuid.uuid4().hex
        caller = caller or Caller.local()
        if self._stopped:
            return call_id, None, CallOutcome.failure(tool, call_id, ErrorType.CANCELLED, "the runtime is stopping")
        try:
            prepared = self._prepare(spec, validated or arguments, policy)
            with self._calls_lock:
                if call_id in self._calls:
                    raise InvalidCall(f"call id {call_id!r} is already in use by a call in flight", field="call_id")
                self._calls[call_id] = tool
        except InvalidCall as exc:
            self.supervisor.record_refusal(tool, ErrorType.VALIDATION)
            refused = CallOutcome.failure(tool, call_id, ErrorType.VALIDATION, str(exc))
            if self.audit is not None:
                given = dict(arguments) if isinstance(arguments, Mapping) else None
                self.audit.record(refused, caller=caller, arguments=given)
            return call_id, self.scans.refused(caller, tool, arguments, refused), refused
        try:
            scan = self.scans.open(
                caller, tool, call_id, arguments,
                target=prepared.target, resolved_targets=tuple(prepared.resolved_targets), argv=tuple(prepared.argv),
            )
        except BaseException:
            with self._calls_lock:  # never admitted: its id is free again
                self._calls.pop(call_id, None)
            raise
        sink = self.scans.progress_sink(scan, then=progress)

        def attempt(attempt_reply: Reply[CallOutcome], number: int) -> Call:
            # Each attempt's process group is watched under a key of its own: an earlier attempt's
            # group may still be dying when the next one starts.
            key = scan.record.scan_id if number == 1 else f"{scan.record.scan_id}.{number}"
            return Call(
                call_id=call_id,
                prepared=prepared,
                reply=attempt_reply,
                progress=sink,
                on_spawn=lambda pid, home: self._spawned(scan, key, pid, home),
                on_reaped=lambda: self._reaped(key),
            )

        reply.on_resolved(lambda outcome: self._answered(call_id, scan, outcome, caller))
        self.retries.submit(call_id, tool, getattr(self.settings.tools, tool).retry, attempt, reply)
        return call_id, scan.record.scan_id, None

    def _prepare(
        self, spec: ToolSpec, arguments: Mapping[str, Any] | ToolArguments, policy: TargetPolicy
    ) -> PreparedCall:
        if not isinstance(arguments, Mapping | ToolArguments):
            raise InvalidCall("arguments must be an object", field="arguments")
        return prepare_call(spec, arguments, settings=getattr(self.settings.tools, spec.name), policy=policy)

    def _spawned(self, scan: LiveScan, key: str, pid: int, home: str | None) -> None:
        """Runner thread: a run's process group exists; the store and the watchdog (under `key`) learn where it is."""
        ticks = process_start_ticks(pid)
        if ticks is None:  # already gone
            return
        self.scans.spawned(scan, pid, ticks, home)
        if self.watchdog is not None:
            self.watchdog.watch(key, pid, ticks, home)

    def _reaped(self, key: str) -> None:
        """Runner thread: the run's processes are gone (its answer may have gone out long before)."""
        if self.watchdog is not None:
            self.watchdog.forget(key)

    def _answered(self, call_id: str, scan: LiveScan, outcome: CallOutcome, caller: Caller) -> None:
        with self._calls_lock:
            self._calls.pop(call_id, None)
        self.scans.finished(scan, outcome)
        if self.audit is not None:
            self.audit.record(outcome, caller=caller)


def _this_process() -> tuple[int, int, str]:
    pid = os.getpid()
    return pid, process_start_ticks(pid) or 0, boot_id()


def _still_running(pid: int, start_ticks: int, boot: str) -> bool:
    """Whether the process that started at `start_ticks` as `pid` in boot `boot` is still there (Linux).

    Pid and start ticks name one process within a boot; the boot id keeps a daemon that a reboot gave
    the same pid and ticks from taking an earlier life's scans for its own.
    """
    return pid > 0 and boot == boot_id() and process_start_ticks(pid) == start_ticks


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "fault"
    return f"{where}: {error['msg']}"


def _on_loop(loop: asyncio.AbstractEventLoop, progress: ProgressSink) -> ProgressSink:
    """Progress comes from runner threads; deliver it on the caller's loop."""

    def deliver(done: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone
            loop.call_soon_threadsafe(progress, done, total, message)

    return deliver


__all__ = ["Runtime", "RuntimeStopped"]
