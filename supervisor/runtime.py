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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import Collector
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
from actors.prepare import PreparedCall, on_pool, prepare_call, slot_name
from actors.reply import AsyncReply, Reply, ThreadReply
from actors.results import NODE_LOST_RETRY_SEC, CallOutcome, ErrorType, InvalidCall
from actors.tool import Call
from actors.tools import TOOL_SPECS
from actors.tools.base import ToolArguments, ToolSpec
from actors.watchdog import Watchdog
from supervisor.audit import AuditLog
from supervisor.config import (
    CONFIG_ENV,
    ClusterSettings,
    ConfigError,
    FaultSettings,
    Settings,
    load_settings,
    settings_from,
)
from supervisor.metrics import ConfigCollector, PoolNodesCollector, ScanStoreCollector
from supervisor.pools import route, split_slot_name
from supervisor.reload_plan import ReloadPlan, plan_reload
from supervisor.restarter import place_here
from supervisor.retrier import Retrier
from supervisor.scans.service import LiveScan, Scans
from supervisor.scans.store import ScanStore, StoreClosed
from supervisor.scope import with_scope
from supervisor.slots import disabled_in_config
from supervisor.status import ClusterStatus, ConfigStatus, ReloadAttempt, ScanStoreStatus, Status
from supervisor.supervisor import Supervisor
from supervisor.tool_changes import ToolChange
from supervisor.tracing import NO_SPAN, CallSpan, CallTracer, take_handed_over, tracer_for

if TYPE_CHECKING:
    from supervisor.cluster import Cluster

logger = logging.getLogger(__name__)


ConfigLike = Settings | Mapping[str, Any] | str | Path
"""What a config may be given as: settings, a dict shaped like the TOML file, or a path to one."""


class RuntimeStopped(RuntimeError):
    """An operator query (status, metrics, controls) reached a runtime that has stopped."""


@dataclass(frozen=True)
class InForce:
    """The config calls are admitted under, swapped whole by a reload: a call reads it once."""

    settings: Settings
    policy: TargetPolicy
    lookups: Lookups
    serving: frozenset[str]  # the tools that take calls
    disabled: Mapping[str, str]  # the others, and what their callers are told
    tool_infos: tuple[ToolInfo, ...]  # what tools/list shows: the serving tools, each with the scope


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
        source: Callable[[], Settings] | None = None,
        source_name: str | None = None,
        tracer: CallTracer | None = None,
    ) -> None:
        # Call spans: `[telemetry]`'s exporter (before anything starts: it may be a ConfigError), or the one given.
        self._owns_tracer = tracer is None
        self.tracer = tracer_for(settings.telemetry) if tracer is None else tracer
        self.owns_process = owns_process and set_subreaper(True)
        # Owning the process, the runtime also ends its runs if it is killed: a watchdog outlives it for that.
        self.watchdog = Watchdog() if self.owns_process else None
        self._resolver = resolver
        self._clock = clock
        # Every tool the config names has a slot, serving or not: a reload or an operator may switch it.
        self.specs = {name: TOOL_SPECS[name] for name, _ in settings.tools.items()}
        self._operator_disabled: dict[str, str] = {}  # tool -> what its callers are told
        self._in_force = self._config_in_force(settings, None)
        self.config = ConfigStatus(digest=settings.digest(), source=source_name, loaded_at=clock())
        self._source = source
        # One reload or switch at a time; each call reads the config in force once, never half of a reload.
        self._reload_lock = threading.Lock()
        self._reload_checks: list[Callable[[Settings], None]] = []
        self._tools_listeners: list[Callable[[], None]] = []
        self._reload_listeners: list[Callable[[Settings, Settings], None]] = []
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
        collectors: list[Collector] = [
            ScanStoreCollector(self._scan_store_status), ConfigCollector(lambda: self.config)
        ]
        # With `[cluster] engine = "ray"`, a Ray cluster whose pools run the processes; else none.
        self.cluster = _join_cluster(settings.cluster)
        if self.cluster is not None:
            collectors.append(PoolNodesCollector(self._cluster_status))
        try:
            self.supervisor = Supervisor(
                settings, self.specs, on_escalate=self._escalate, collectors=collectors,
                placement=self.cluster.place if self.cluster is not None else place_here,
                cluster=self._cluster_status if self.cluster is not None else None,
            )
        except BaseException:
            if self.cluster is not None:
                self.cluster.close()
            raise
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

    @property
    def settings(self) -> Settings:
        """The settings in force: those the runtime started with, or the last reload's."""
        return self._in_force.settings

    @property
    def policy(self) -> TargetPolicy:
        """The target policy in force (names are looked up on the look-up threads, within their deadline)."""
        return self._in_force.policy

    @property
    def lookups(self) -> Lookups:
        return self._in_force.lookups

    def _config_in_force(self, settings: Settings, before: InForce | None) -> InForce:
        """What calls are admitted under: the settings, the policy and look-ups built from them, the tool list."""
        dns = settings.policy
        if before is not None and before.settings.policy == dns:
            lookups = before.lookups  # look-ups in flight go on
        else:  # its resolver asks for the address families the networks need
            policy = TargetPolicy(dns, resolver=self._resolver)
            lookups = Lookups(policy.resolver, timeout_sec=dns.dns_timeout_sec, limit=dns.dns_concurrency)
        # Blocking calls wait on a look-up here, at most its deadline; `acall` settles it first, on the loop.
        policy = TargetPolicy(dns, resolver=lookups.resolve)
        disabled = {name: why for name in self.specs if (why := self._why_disabled_by(name, settings))}
        serving = frozenset(name for name in self.specs if name not in disabled)
        # Each scanner states the scope it may scan, so a model plans inside it instead of learning it from refusals.
        infos = tuple(
            with_scope(self.specs[name].info(getattr(settings.tools, name)), settings.policy)
            for name in self.specs
            if name in serving
        )
        return InForce(settings, policy, lookups, serving, disabled, infos)

    # --- life -------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        config: Settings | Mapping[str, Any] | str | Path | None = None,
        *,
        resolver: Resolver | None = None,
        owns_process: bool = False,
        clock: Callable[[], float] = time.time,
        tracer: CallTracer | None = None,
        source: Callable[[], Settings] | None = None,
        source_name: str | None = None,
    ) -> Runtime:
        """Start from a Settings object, a dict shaped like the TOML file, or a path to one.

        Every run ends the processes it can trace: its group, and what
        descends from its tool. A process a tool detaches by forking twice is
        re-parented away and traced only when this process is a child
        subreaper. With `owns_process` (this process runs nothing else) the
        runtime makes it one (Linux), starts a watchdog process that ends the
        runs should this process be killed, and `stop` ends every child left.

        Each call is a span of `tracer` (the runtime's own from `[telemetry]` when not given).
        A reload re-reads `source` (named `source_name` in status), by default where `config` came from.
        """
        if source is None:
            source, source_name = _source_of(config)
        return cls(
            settings_from(config), resolver=resolver, owns_process=owns_process, clock=clock,
            source=source, source_name=source_name, tracer=tracer,
        )

    def stop(self, grace: float = 10.0) -> None:
        """Admit nothing new, let running calls finish within `grace` seconds, then end them.

        Safe to call from several threads (an escalation and a signal handler,
        say): every caller returns once the one shutdown has finished.
        """
        with self._stop_lock:
            if not self._stopped:
                with self._reload_lock:  # a reload being applied finishes first; none starts after
                    self._stopped = True
                self.retries.close()  # calls waiting to be tried again are answered now
                self.supervisor.shutdown(grace)
                if self.cluster is not None:
                    self.cluster.close()  # every incarnation has ended, and its runner with it
                if self.watchdog is not None:
                    self.watchdog.close()  # every run has ended: nothing is left for it to end
                if self.owns_process:
                    end_leftovers()  # whatever got past the runs, zombies included
                self.scans.close()  # every call is answered by now, every scan settled
                if self.audit is not None:
                    self.audit.close()
                if self._owns_tracer:
                    self.tracer.shutdown()  # every span has ended: export what is buffered

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
        return list(self._in_force.tool_infos)

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
        call_id, _, early = self._submit(tool, arguments, reply, None, call_id=call_id, progress=None, caller=caller)
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
        looked_up, validated = await self._looked_up(self._spec(tool), arguments)
        loop = asyncio.get_running_loop()
        reply: AsyncReply[CallOutcome] = AsyncReply(loop)
        sink = _on_loop(loop, progress) if progress is not None else None
        call_id, scan_id, early = self._submit(
            tool, arguments, reply, looked_up, call_id=call_id, progress=sink, caller=caller, validated=validated
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
        """The supervisor's snapshot of the tools, with the scan store's numbers and the config beside it."""
        self._check_running()
        scans = self._scan_store_status()
        return self.supervisor.status().model_copy(update={"scans": scans, "config": self.config})

    def _cluster_status(self) -> ClusterStatus:
        """The scanner pools and their nodes as the cluster's watcher last saw them (never waits on Ray)."""
        assert self.cluster is not None
        return self.cluster.view

    # --- live configuration ---------------------------------------------------------

    def reload(self, config: ConfigLike | None = None, *, by: str = "operator") -> ReloadAttempt:
        """Read and validate a whole new config, then put it in force at once; returns what changed.

        `config` defaults to where the runtime's config came from (its file, re-read). A config that
        does not validate changes nothing: `ConfigError` names the key, and status keeps the attempt.
        Calls already admitted keep the config they were admitted under; a tool whose binary changed
        gets a new incarnation while the old one finishes its calls (`[reload] drain_sec`); keys that
        cannot change while serving are reported in `needs_restart` and keep their running values.
        """
        with self._reload_lock:
            self._check_running()
            started, old = time.monotonic(), self.settings
            try:
                new = self._read_config(config)
                for check in self._reload_checks:
                    check(new)
            except ConfigError as exc:
                failed = ReloadAttempt(at=self._clock(), by=by, ok=False, old_digest=old.digest(), error=str(exc))
                refused = self.config.refused + 1
                self.config = self.config.model_copy(update={"last_failure": failed, "refused": refused})
                self._audit_reload(failed)
                raise
            plan = plan_reload(old, new, self._operator_disabled)
            self._put_in_force(plan.settings, self._tool_changes(plan), reloaded=True)
            self.scans.keep_for(plan.settings.scans.retention_days * 86_400, plan.settings.scans.max_scans)
            attempt = _applied(plan, old, by=by, at=self._clock(), took_sec=time.monotonic() - started)
            self.config = self.config.model_copy(
                update={
                    "digest": attempt.new_digest,
                    "loaded_at": attempt.at,
                    "reloads": self.config.reloads + 1,
                    "last_reload": attempt,
                    "needs_restart": list(plan.needs_restart),
                }
            )
            self._audit_reload(attempt)
        for listener in list(self._reload_listeners):
            _notify(listener, old, plan.settings)
        logger.info(
            "configuration reloaded",
            extra={"by": by, "digest": attempt.new_digest, "changed": attempt.changed, "later": attempt.needs_restart},
        )
        return attempt

    def disable_tool(self, tool: str, reason: str = "", *, by: str = "operator") -> str:
        """Take a tool out of service until `enable_tool`: it is no longer listed, new calls are answered
        `tool_disabled` with the reason, its queued calls too; its running calls finish. A reload keeps it so."""
        self._spec(tool)
        with self._reload_lock:
            self._check_running()
            if tool in self._operator_disabled:
                return f"{tool} is already disabled"
            told = f"{tool} was disabled by {by}" + (f": {reason}" if reason else "")
            self._operator_disabled[tool] = told
            settings = self.settings
            was_serving = tool in self._in_force.serving
            # Sent also when the config disables it already: the operator's reason is the one shown now.
            self._put_in_force(settings, [ToolChange(tool, "disable", getattr(settings.tools, tool), told)])
            if self.audit is not None:
                self.audit.tool_switched(tool, enabled=False, by=by, reason=reason or None)
        logger.info("tool disabled", extra={"tool": tool, "by": by, "reason": reason})
        return f"{tool} disabled; its running calls finish" if was_serving else f"{tool} disabled"

    def enable_tool(self, tool: str, *, by: str = "operator") -> str:
        """Bring back a tool an operator disabled; one the config disables stays disabled (the config says so)."""
        self._spec(tool)
        with self._reload_lock:
            self._check_running()
            if self._operator_disabled.pop(tool, None) is None:
                return f"{tool} is not disabled by an operator" + (
                    "" if getattr(self.settings.tools, tool).enabled else f"; {disabled_in_config(tool)}"
                )
            settings = self.settings
            tool_settings = getattr(settings.tools, tool)
            if tool_settings.enabled:
                change = ToolChange(tool, "enable", tool_settings)
            else:  # still out of service, now for the config's reason
                change = ToolChange(tool, "disable", tool_settings, disabled_in_config(tool))
            self._put_in_force(settings, [change])
            if self.audit is not None:
                self.audit.tool_switched(tool, enabled=True, by=by)
        logger.info("tool enabled", extra={"tool": tool, "by": by})
        if not tool_settings.enabled:
            return f"{tool} is no longer disabled by an operator, but {disabled_in_config(tool)}"
        return f"{tool} enabled"

    def on_tools_changed(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` (on the changing thread) whenever `list_tools()` changes; returns the unsubscribe."""
        self._tools_listeners.append(listener)
        return lambda: _discard(self._tools_listeners, listener)

    def on_reloaded(self, listener: Callable[[Settings, Settings], None]) -> Callable[[], None]:
        """Call `listener(old, new)` after each applied reload; returns the unsubscribe."""
        self._reload_listeners.append(listener)
        return lambda: _discard(self._reload_listeners, listener)

    def add_reload_check(self, check: Callable[[Settings], None]) -> None:
        """A check a new config must pass before it is put in force (it raises `ConfigError`)."""
        self._reload_checks.append(check)

    def _tool_changes(self, plan: ReloadPlan) -> list[ToolChange]:
        tools = plan.settings.tools
        return [
            ToolChange(tool, kind, getattr(tools, tool), self._why_disabled_by(tool, plan.settings))
            for tool, kind in plan.tools.items()
        ]

    def _read_config(self, config: ConfigLike | None) -> Settings:
        if config is not None:
            return settings_from(config)
        if self._source is None:
            raise ConfigError("this runtime was started from settings, not a file: pass the new settings to reload")
        return self._source()

    def _put_in_force(self, settings: Settings, changes: list[ToolChange], *, reloaded: bool = False) -> None:
        """The supervisor first, then the config calls are admitted under; then whoever lists tools is told.

        `reloaded`: `settings` are a reload's, now in force everywhere; otherwise an operator's switch.

        In that order a call never meets a tool half-switched: until the swap, a newly enabled tool is
        still refused here, and a newly disabled one is refused by its slot.
        """
        before = self._in_force
        after = self._config_in_force(settings, before)
        if changes or reloaded:
            serving = {name: self.specs[name] for name in after.serving}  # their binaries are probed
            self.supervisor.change_tools(changes, settings if reloaded else None, serving)
        for change in changes:  # calls waiting to be tried again are the tool's too
            if change.kind == "disable":
                self.retries.tool_disabled(change.tool, change.reason)
        self._in_force = after
        if after.tool_infos != before.tool_infos:
            for listener in list(self._tools_listeners):
                _notify(listener)

    def _why_disabled_by(self, tool: str, settings: Settings) -> str:
        told = self._operator_disabled.get(tool)
        if told is not None:
            return told
        return disabled_in_config(tool) if not getattr(settings.tools, tool).enabled else ""

    def _audit_reload(self, attempt: ReloadAttempt) -> None:
        if self.audit is not None:
            self.audit.reloaded(attempt)

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
        pools = [pool.name for pool in self.settings.cluster.pools]
        if fault.pool is not None and fault.pool not in pools:
            known = ", ".join(pools) if pools else "none (every tool runs here)"
            raise InvalidCall(f"no scanner pool is named {fault.pool!r}; pools: {known}", field="pool")
        if fault.kind == "runner_lost" and not pools:
            raise InvalidCall("runner_lost needs scanner pools: every tool runs here, no runner to lose", field="kind")
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
        """`action` on a tool (on each of its pools), or on one pool's slot of it ("nmap@dmz")."""
        self._check_running()
        name, pool = split_slot_name(tool)
        if name not in self.specs:
            raise UnknownTool(tool, sorted(self.specs))
        if pool is not None and tool not in self.supervisor.slots:  # a pool the tool is not served on
            slots = [slot for slot in self.supervisor.slots if split_slot_name(slot)[0] == name]
            raise UnknownTool(tool, sorted({name, *slots}))
        return self.supervisor.control(action, tool)

    # --- internals --------------------------------------------------------------

    def _spec(self, tool: str) -> ToolSpec:
        spec = self.specs.get(tool)
        if spec is None:
            raise UnknownTool(tool, sorted(self.specs))
        return spec

    async def _looked_up(
        self, spec: ToolSpec, arguments: Mapping[str, Any]
    ) -> tuple[LookedUp | None, ToolArguments | None]:
        """The look-up one call from asyncio needs, settled, and its validated arguments.

        A call that will be refused anyway (the runtime stopping, arguments that do not validate) looks
        nothing up: names are resolved only for calls that may run.
        """
        if self._stopped or not isinstance(arguments, Mapping) or spec.name not in self._in_force.serving:
            return None, None
        try:
            validated = spec.validate_arguments(arguments)  # once: the call is prepared from this
        except InvalidCall:
            return None, None
        live = self._in_force
        name = live.policy.lookup_name(validated.target)
        if name is None:
            return None, validated
        lookup = live.lookups.start(name)
        await lookup.settled()
        return LookedUp(name, lookup.answer), validated

    def _submit(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        reply: Reply[CallOutcome],
        looked_up: LookedUp | None,
        *,
        call_id: str | None,
        progress: ProgressSink | None,
        caller: Caller | None,
        validated: ToolArguments | None = None,
    ) -> tuple[str, str | None, CallOutcome | None]:
        """Admit a call under the config in force, or refuse it; (call id, scan id, the refusal's answer or None)."""
        spec = self._spec(tool)
        call_id = call_id or uuid.uuid4().hex
        caller = caller or Caller.local()
        span = self._call_span(tool, call_id, caller)
        if self._stopped:
            stopping = CallOutcome.failure(tool, call_id, ErrorType.CANCELLED, "the runtime is stopping")
            span.end(stopping)
            return call_id, None, stopping
        live = self._in_force  # read once: this call is checked and prepared under one config
        if tool not in live.serving:
            why = live.disabled[tool]
            return self._refused(tool, call_id, caller, arguments, span, ErrorType.TOOL_DISABLED, why)
        try:
            policy = _policy_for(live.policy, validated, looked_up)
            prepared = self._prepare(spec, validated or arguments, policy, live.settings)
            unavailable = self._pool_unavailable(prepared)
            if unavailable is None:
                with self._calls_lock:
                    if call_id in self._calls:
                        raise InvalidCall(f"call id {call_id!r} is already in use by a call in flight", field="call_id")
                    self._calls[call_id] = prepared.slot
        except InvalidCall as exc:
            return self._refused(tool, call_id, caller, arguments, span, ErrorType.VALIDATION, str(exc))
        if unavailable is not None:
            return self._refused(
                tool, call_id, caller, arguments, span, ErrorType.NODE_LOST, unavailable, pool=prepared.pool
            )
        try:
            scan = self.scans.open(
                caller, tool, call_id, arguments,
                target=prepared.target, resolved_targets=tuple(prepared.resolved_targets), argv=tuple(prepared.argv),
            )
        except BaseException:
            with self._calls_lock:  # never admitted: its id is free again
                self._calls.pop(call_id, None)
            span.end(CallOutcome.failure(tool, call_id, ErrorType.INTERNAL, "the scan could not be opened"))
            raise
        span.admitted(scan.record.scan_id)
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
                on_spawn=lambda pid, home: self._spawned(scan, span, key, pid, home),
                on_reaped=lambda: self._reaped(span, key),
            )

        reply.on_resolved(lambda outcome: self._answered(call_id, scan, outcome, caller, span))
        self.retries.submit(call_id, tool, getattr(live.settings.tools, tool).retry, attempt, reply)
        return call_id, scan.record.scan_id, None

    def _refused(
        self,
        tool: str,
        call_id: str,
        caller: Caller,
        arguments: Mapping[str, Any],
        span: CallSpan,
        error_type: ErrorType,
        message: str,
        *,
        pool: str | None = None,
    ) -> tuple[str, str | None, CallOutcome]:
        """A call answered before it reached any actor: counted (under the tool, or its slot on `pool` once
        one was chosen), audited, traced and stored as a finished scan."""
        self.supervisor.record_refusal(slot_name(tool, pool), error_type)
        retry = NODE_LOST_RETRY_SEC if error_type is ErrorType.NODE_LOST else None
        refused = CallOutcome.failure(tool, call_id, error_type, message, retry_after_sec=retry, pool=pool)
        refused_scan: str | None = None
        try:
            if self.audit is not None:
                given = dict(arguments) if isinstance(arguments, Mapping) else None
                self.audit.record(refused, caller=caller, arguments=given)
            refused_scan = self.scans.refused(caller, tool, arguments, refused)
        finally:
            span.end(refused, scan_id=refused_scan)
        return call_id, refused_scan, refused

    def _call_span(self, tool: str, call_id: str, caller: Caller) -> CallSpan:
        """The call's span: the one its transport started, else a new one; `NO_SPAN` with tracing off."""
        if not self.tracer.enabled:
            return NO_SPAN
        return take_handed_over(call_id) or self.tracer.start(tool, call_id, owner=caller.owner)

    def _prepare(
        self,
        spec: ToolSpec,
        arguments: Mapping[str, Any] | ToolArguments,
        policy: TargetPolicy,
        settings: Settings,
    ) -> PreparedCall:
        """The call checked and built under `settings`, and routed to the pool that holds its targets, if any."""
        if not isinstance(arguments, Mapping | ToolArguments):
            raise InvalidCall("arguments must be an object", field="arguments")
        tool_settings = getattr(settings.tools, spec.name)
        prepared = prepare_call(spec, arguments, settings=tool_settings, policy=policy)
        pool = route(prepared.resolved_targets, settings.cluster.pools)
        return prepared if pool is None else on_pool(prepared, pool.name, tool_settings, settings.policy)

    def _pool_unavailable(self, prepared: PreparedCall) -> str | None:
        """Why the call's pool cannot take it now (no live node), or None."""
        if prepared.pool is None or self.cluster is None or self.cluster.live(prepared.pool):
            return None
        resource = self.cluster.pools[prepared.pool].resource
        return f"pool {prepared.pool} has no live node (no node advertising {resource} answers); retry later"

    def _spawned(self, scan: LiveScan, span: CallSpan, key: str, pid: int, home: str | None) -> None:
        """Runner thread: a run's process group exists; the store and the watchdog (under `key`) learn where it is."""
        span.spawned(pid)
        ticks = process_start_ticks(pid)
        if ticks is None:  # already gone
            return
        self.scans.spawned(scan, pid, ticks, home)
        if self.watchdog is not None:
            self.watchdog.watch(key, pid, ticks, home)

    def _reaped(self, span: CallSpan, key: str) -> None:
        """Runner thread: the run's processes are gone (its answer may have gone out long before)."""
        span.exited()
        if self.watchdog is not None:
            self.watchdog.forget(key)

    def _answered(self, call_id: str, scan: LiveScan, outcome: CallOutcome, caller: Caller, span: CallSpan) -> None:
        """The answering thread, before anyone sees the answer: the span ended, the scan settled, the audit line."""
        with self._calls_lock:
            self._calls.pop(call_id, None)
        span.end(outcome)
        self.scans.finished(scan, outcome)
        if self.audit is not None:
            self.audit.record(outcome, caller=caller)


def _join_cluster(settings: ClusterSettings) -> Cluster | None:
    """The Ray cluster `[cluster]` names, joined; None when processes run here."""
    if settings.engine != "ray":
        return None
    try:
        from supervisor.cluster import Cluster  # imports Ray: only a daemon that uses it pays for it
    except ModuleNotFoundError as missing:
        if missing.name != "ray":
            raise
        raise ConfigError('cluster.engine = "ray" needs Ray: pip install "labrecon[ray]"') from None
    return Cluster.connect(settings)


def _source_of(config: ConfigLike | None) -> tuple[Callable[[], Settings] | None, str | None]:
    """Where a reload re-reads the config from: the file (or $LABRECON_CONFIG) it came from; nowhere for objects."""
    if isinstance(config, str | Path):
        return (lambda: load_settings(config)), str(config)
    if config is None:
        return (lambda: load_settings(None)), os.environ.get(CONFIG_ENV) or None
    return None, None


def _applied(plan: ReloadPlan, old: Settings, *, by: str, at: float, took_sec: float) -> ReloadAttempt:
    return ReloadAttempt(
        at=at,
        by=by,
        ok=True,
        old_digest=old.digest(),
        new_digest=plan.settings.digest(),
        changed=list(plan.applied),
        needs_restart=list(plan.needs_restart),
        tools=dict(plan.tools),
        took_sec=round(took_sec, 6),
    )


def _notify(listener: Callable[..., None], *args: Any) -> None:
    """A listener that fails is logged; the change it was told of stands."""
    try:
        listener(*args)
    except Exception:
        logger.exception("a config listener failed")


def _discard(listeners: list[Any], listener: Any) -> None:
    with contextlib.suppress(ValueError):
        listeners.remove(listener)


@dataclass(frozen=True)
class LookedUp:
    """The name a call's target needed, looked up before the call was admitted, and the answer."""

    name: str
    answer: Resolver


def _policy_for(policy: TargetPolicy, validated: ToolArguments | None, looked_up: LookedUp | None) -> TargetPolicy:
    """`policy`, asking the settled look-up for the name it needs.

    A reload between the look-up and the admission may change what the target needs; then the policy
    in force asks its own look-ups, within their deadline.
    """
    if looked_up is None or validated is None or policy.lookup_name(validated.target) != looked_up.name:
        return policy
    return policy.with_resolver(looked_up.answer)


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
