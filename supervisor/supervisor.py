"""The supervisor: keeps the tool actors alive and is the one source of truth about them.

OTP is the model (one_for_one, restart types, restart intensity, backoff),
built on pykka, which has none of it. The supervisor is itself an actor: the
tool actors report to it (calls admitted, started, finished, breaker
changes, crashes), and everything an operator sees — metrics, status, health
— is derived from that one stream inside its mailbox, so no other part keeps
a copy of these numbers. Death is seen through the actors' `on_failure`
reports; a hang is seen through a ping each tool actor must answer within a
deadline, because a blocked thread looks alive to pykka.

`Supervisor` is the thread-safe handle the runtime holds; `SupervisorActor`
is the actor behind it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.breaker import BreakerState, CircuitBreaker
from actors.events import ActorCrashed, BreakerChanged, CallAdmitted, CallFinished, CallStarted
from actors.reply import Reply, ThreadReply
from actors.results import ErrorType
from actors.tool import Call, Cancel, Drain, ForceBreaker, Ping, ToolActor
from supervisor.config import FaultSettings, Settings
from supervisor.faults import FaultPlan
from supervisor.health import HealthChecker
from supervisor.metrics import Metrics
from supervisor.restarts import RestartPolicy, RestartType
from supervisor.slots import Refusal, ToolSlot
from supervisor.status import BreakerStatus, RuntimeInfo, Status, ToolStatus
from supervisor.version import VERSION

# --- messages to the supervisor actor ---------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time to ping the children and look for hangs."""


@dataclass(frozen=True)
class StartChild:
    tool: str
    after_incarnation: int


@dataclass(frozen=True)
class Refused:
    """A call answered before reaching any actor (validation, a failed tool, a full stash)."""

    tool: str
    outcome: str


@dataclass(frozen=True)
class Control:
    action: str  # reset | restart | breaker_open | breaker_closed
    tool: str


@dataclass(frozen=True)
class GetStatus:
    pass


@dataclass(frozen=True)
class GetMetrics:
    pass


class SupervisorActor(pykka.ThreadingActor):
    def __init__(
        self,
        settings: Settings,
        specs: dict[str, Any],
        slots: dict[str, ToolSlot],
        plan: FaultPlan,
        *,
        on_escalate: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.sup = settings.supervisor
        self.plan = plan
        self.on_escalate = on_escalate
        self.clock = clock
        self.started_at = clock()
        self.metrics = Metrics(specs, VERSION)
        self.health = HealthChecker(settings, specs)
        self.slots = slots
        # call_id -> (tool, "queued" | "running"): the books behind in_flight and queue depth.
        self.calls: dict[str, tuple[str, str]] = {}
        self.outcomes: dict[str, dict[str, int]] = {name: {} for name in specs}
        self._timers: set[threading.Timer] = set()

    # --- life ---------------------------------------------------------------------

    def on_start(self) -> None:
        for slot in self.slots.values():
            self._start_child(slot)

    def on_stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()

    def on_receive(self, message: Any) -> Any:
        match message:
            case CallAdmitted(tool, call_id, queued):
                if queued:
                    self.calls[call_id] = (tool, "queued")
                    self._gauge(tool)
            case CallStarted(tool, call_id, at):
                self.calls[call_id] = (tool, "running")
                self._gauge(tool)
                slot = self.slots[tool]
                if slot.died_at is not None:
                    # The first call a new incarnation starts ends its restart.
                    self.metrics.restart_finished(tool, at - slot.died_at)
                    slot.died_at = None
            case CallFinished(tool, call_id, outcome, duration, ran):
                self.calls.pop(call_id, None)
                self._count(tool, outcome, duration, ran)
                self._gauge(tool)
            case Refused(tool, outcome):
                self._count(tool, outcome, 0.0, False)
            case BreakerChanged(tool, _old, new, _reason):
                self.metrics.set_breaker(tool, new)
            case ActorCrashed(tool, incarnation, reason):
                self._child_died(self.slots[tool], incarnation, "crash", reason)
            case StartChild(tool, after):
                slot = self.slots[tool]
                if slot.incarnation == after and slot.state == "restarting":
                    self._start_child(slot)
            case Tick():
                self._check_pings()
            case Control(action, tool):
                return self._control(action, self.slots[tool])
            case GetStatus():
                return self._status()
            case GetMetrics():
                return self.metrics.text()
            case _:
                raise TypeError(f"supervisor got an unknown message {message!r}")
        return None

    # --- children -------------------------------------------------------------------

    def _start_child(self, slot: ToolSlot) -> None:
        incarnation = slot.incarnation + 1
        retired = threading.Event()
        ref = ToolActor.start(
            slot.spec,
            slot.settings,
            parent=self.actor_ref,
            incarnation=incarnation,
            breaker=slot.breaker,
            faults=self.plan,
            retired=retired,
            clock=self.clock,
        )
        slot.install(ref, incarnation, retired)
        self.metrics.tool_up.labels(slot.name).set(1)

    def _child_died(self, slot: ToolSlot, incarnation: int, kind: str, reason: str) -> None:
        if incarnation != slot.incarnation or slot.state != "running":
            return  # a report from an incarnation already replaced
        swept = slot.sweep()
        slot.died_at = self.clock()
        for call_id, (tool, _) in list(self.calls.items()):
            if tool == slot.name:
                del self.calls[call_id]  # running ones are counted below; queued ones are re-admitted
        for call in swept.running:
            if call.run is not None:
                call.run.cancel()
            self._settle(call, ErrorType.ACTOR_RESTARTED, f"{slot.name} {_PAST[kind]} while the call ran; retry it")
        for call in swept.cancelled:
            self._settle(call, ErrorType.CANCELLED, "the call was cancelled")
        self._gauge(slot.name)
        slot.restarts += 1
        slot.last_restart_reason = f"{kind}: {reason}"
        self.metrics.restarts.labels(slot.name, kind).inc()
        self.metrics.tool_up.labels(slot.name).set(0)
        if kind == "operator":
            self._start_child(slot)
            return
        decision = slot.policy.on_death(self.clock())
        if decision.restart:
            self._schedule_start(slot, decision.delay_sec)
        elif decision.intensity_exceeded and self.sup.on_intensity_exceeded == "escalate":
            self._give_up(slot, decision.reason)
            if self.on_escalate is not None:
                threading.Thread(target=self.on_escalate, args=(f"{slot.name}: {decision.reason}",), daemon=True).start()
        else:
            self._give_up(slot, decision.reason)

    def _schedule_start(self, slot: ToolSlot, delay: float) -> None:
        if delay <= 0:
            self._start_child(slot)
            return
        message = StartChild(slot.name, slot.incarnation)

        def fire() -> None:
            self._timers.discard(timer)
            try:
                self.actor_ref.tell(message)
            except pykka.ActorDeadError:
                pass

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _give_up(self, slot: ToolSlot, reason: str) -> None:
        slot.set_state("failed", reason)
        for call in slot.take_stash():
            self._settle(call, ErrorType.TOOL_FAILED, _failed_message(slot.name, reason))

    def _settle(self, call: Call, error_type: ErrorType, message: str) -> None:
        if not call.reply.done:
            self._count(call.prepared.tool, error_type.value, self.clock() - call.admitted_at, call.started)
            call.fail(error_type, message, retry_after_sec=0.0 if error_type is ErrorType.ACTOR_RESTARTED else None)

    def _check_pings(self) -> None:
        now = self.clock()
        for slot in self.slots.values():
            if slot.state != "running" or slot.ref is None:
                continue
            if slot.ping is not None and not slot.ping.done:
                if now - slot.ping_sent_at > self.sup.ping_deadline_sec:
                    waited = now - slot.ping_sent_at
                    self._child_died(slot, slot.incarnation, "hang", f"no answer to a ping for {waited:.1f}s")
                continue
            slot.ping = ThreadReply()
            slot.ping_sent_at = now
            try:
                slot.ref.tell(Ping(slot.ping))
            except pykka.ActorDeadError:
                pass  # its crash report is on the way

    def _control(self, action: str, slot: ToolSlot) -> str:
        if action == "reset":
            if slot.state != "failed":
                return f"{slot.name} is {slot.state}, not failed; nothing to reset"
            slot.policy.reset()
            slot.breaker.force(BreakerState.CLOSED, "operator reset")
            self.metrics.set_breaker(slot.name, BreakerState.CLOSED.value)
            slot.set_state("restarting")
            self._start_child(slot)
            return f"{slot.name} reset and serving again"
        if action == "restart":
            if slot.state != "running":
                return f"{slot.name} is {slot.state}; use reset for a failed tool"
            old = slot.ref
            self._child_died(slot, slot.incarnation, "operator", "restart requested")
            if old is not None:
                old.stop(block=False)
            return f"{slot.name} restarted (incarnation {slot.incarnation})"
        if action in ("breaker_open", "breaker_closed"):
            state = BreakerState.OPEN if action == "breaker_open" else BreakerState.CLOSED
            if slot.ref is None or slot.state != "running":
                return f"{slot.name} is {slot.state}; its breaker cannot be changed now"
            slot.ref.tell(ForceBreaker(state))
            return f"{slot.name} breaker forced {state.value}"
        raise ValueError(f"unknown control action {action!r}")

    # --- books --------------------------------------------------------------------

    def _count(self, tool: str, outcome: str, duration: float, ran: bool) -> None:
        self.metrics.call_finished(tool, outcome, duration, ran)
        counts = self.outcomes[tool]
        counts[outcome] = counts.get(outcome, 0) + 1

    def _gauge(self, tool: str) -> None:
        in_flight, queued = self._load(tool)
        self.metrics.in_flight.labels(tool).set(in_flight)
        self.metrics.queue_depth.labels(tool).set(queued)

    def _load(self, tool: str) -> tuple[int, int]:
        in_flight = queued = 0
        for name, state in self.calls.values():
            if name == tool:
                if state == "running":
                    in_flight += 1
                else:
                    queued += 1
        return in_flight, queued

    def _status(self) -> Status:
        tools = {}
        for name, slot in self.slots.items():
            in_flight, queued = self._load(name)
            p50, p95 = self.metrics.percentiles(name)
            breaker = slot.breaker
            tools[name] = ToolStatus(
                name=name,
                state=slot.state,
                incarnation=slot.incarnation,
                restarts=slot.restarts,
                last_restart_reason=slot.last_restart_reason,
                failed_reason=slot.failed_reason,
                breaker=BreakerStatus(
                    state=breaker.state.value,
                    consecutive_failures=breaker.consecutive_failures,
                    retry_after_sec=breaker.retry_after(),
                ),
                in_flight=in_flight,
                queued=queued,
                stashed=len(slot.stash),
                calls=dict(self.outcomes[name]),
                p50_sec=p50,
                p95_sec=p95,
                restart_p50_sec=self.metrics.restart_percentile(name, 0.50),
                restart_p99_sec=self.metrics.restart_percentile(name, 0.99),
            )
        return Status(
            runtime=RuntimeInfo(
                version=VERSION,
                pid=os.getpid(),
                uptime_sec=round(self.clock() - self.started_at, 3),
                config_digest=self.settings.digest(),
            ),
            tools=tools,
            faults=self.plan.list(),
            health=self.health.evaluate(tools),
        )


def build_slots(settings: Settings, specs: dict[str, Any], clock: Callable[[], float]) -> dict[str, ToolSlot]:
    sup = settings.supervisor
    slots = {}
    for name, spec in specs.items():
        tool_settings = getattr(settings.tools, name)
        policy = RestartPolicy(
            restart_type=RestartType(tool_settings.restart),
            max_restarts=sup.max_restarts,
            window_sec=sup.restart_window_sec,
            backoff_initial_sec=sup.backoff_initial_sec,
            backoff_max_sec=sup.backoff_max_sec,
            backoff_reset_sec=sup.backoff_reset_sec,
        )
        breaker = CircuitBreaker(tool_settings.breaker, clock=clock)
        slots[name] = ToolSlot(name, spec, tool_settings, policy, breaker)
    return slots


_PAST = {"crash": "crashed", "hang": "hung", "operator": "was restarted by an operator"}


def _failed_message(tool: str, reason: str) -> str:
    return f"{tool} is disabled after repeated crashes ({reason}); an operator can reset it"


class Supervisor:
    """The runtime's thread-safe handle on the supervisor actor and the routing slots."""

    def __init__(
        self,
        settings: Settings,
        specs: dict[str, Any],
        *,
        on_escalate: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = FaultPlan(settings.faults)
        self.slots = build_slots(settings, specs, clock)  # shared with the actor; thread-safe
        self.stash_limit = settings.supervisor.stash_limit
        self.ref = SupervisorActor.start(settings, specs, self.slots, self.plan, on_escalate=on_escalate, clock=clock)
        self._ticker_stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick,
            args=(settings.supervisor.ping_interval_sec,),
            name="labrecon-supervisor-tick",
            daemon=True,
        )
        self._ticker.start()

    def _tick(self, interval: float) -> None:
        while not self._ticker_stop.wait(interval):
            try:
                self.ref.tell(Tick())
            except pykka.ActorDeadError:
                return

    # --- calls --------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        slot = self.slots[call.prepared.tool]
        refusal = slot.route(call, self.stash_limit)
        if refusal is not None:
            self._refuse(call, refusal)

    def _refuse(self, call: Call, refusal: Refusal) -> None:
        tool = call.prepared.tool
        if refusal.state == "failed":
            error_type, message = ErrorType.TOOL_FAILED, _failed_message(tool, refusal.reason or "")
        elif refusal.state == "stopped":
            error_type, message = ErrorType.CANCELLED, "the runtime is stopping"
        else:
            error_type, message = ErrorType.RESOURCE_EXHAUSTED, f"{tool} is restarting and its waiting room is full"
        self.count_refused(tool, error_type)
        call.fail(error_type, message, retry_after_sec=1.0 if error_type is ErrorType.RESOURCE_EXHAUSTED else None)

    def count_refused(self, tool: str, error_type: ErrorType = ErrorType.VALIDATION) -> None:
        try:
            self.ref.tell(Refused(tool, error_type.value))
        except pykka.ActorDeadError:
            pass

    def cancel(self, tool: str, call_id: str) -> bool:
        slot = self.slots.get(tool)
        if slot is None:
            return False
        stashed = slot.cancel(call_id)
        if stashed is not None:
            self.count_refused(tool, ErrorType.CANCELLED)
            stashed.fail(ErrorType.CANCELLED, "the call was cancelled before it started")
            return True
        with slot.lock:
            ref = slot.ref if call_id in slot.pending else None
        if ref is None:
            return False
        try:
            ref.tell(Cancel(call_id))
        except pykka.ActorDeadError:
            pass  # the sweep answers it: cancel_requested is set
        return True

    # --- operators ------------------------------------------------------------------

    def status(self, timeout: float | None = 10.0) -> Status:
        return self.ref.ask(GetStatus(), timeout=timeout)

    def metrics_text(self, timeout: float | None = 10.0) -> bytes:
        return self.ref.ask(GetMetrics(), timeout=timeout)

    def control(self, action: str, tool: str, timeout: float | None = 10.0) -> str:
        if tool not in self.slots:
            raise KeyError(tool)
        return self.ref.ask(Control(action, tool), timeout=timeout)

    def inject(self, fault: FaultSettings) -> int:
        if fault.tool not in self.slots:
            raise KeyError(fault.tool)
        return self.plan.add(fault)

    def clear_faults(self, rule_id: int | None = None, tool: str | None = None) -> int:
        return self.plan.clear(rule_id, tool=tool)

    # --- stopping -----------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Admit nothing new, drain within `grace`, then stop every actor; every call is answered."""
        deadline = time.monotonic() + max(0.0, grace)
        drains: list[Reply[None]] = []
        for slot in self.slots.values():
            with slot.lock:
                state, ref = slot.state, slot.ref
                slot.state = "stopped"
            for call in slot.take_stash():
                self.count_refused(slot.name, ErrorType.CANCELLED)
                call.fail(ErrorType.CANCELLED, "the runtime is stopping")
            if state == "running" and ref is not None:
                reply: ThreadReply[None] = ThreadReply()
                try:
                    ref.tell(Drain(reply))
                    drains.append(reply)
                except pykka.ActorDeadError:
                    pass
        for reply in drains:
            try:
                reply.wait(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        self.plan.release_all()
        for slot in self.slots.values():
            if slot.ref is not None:
                try:
                    slot.ref.stop(block=True, timeout=5.0)
                except (pykka.ActorDeadError, pykka.Timeout):
                    slot.retired.set()  # hung: abandon it; its daemon thread cannot hold the process
            # Anything a dead or hung incarnation still held is answered here.
            for call in list(slot.pending.values()):
                if not call.reply.done:
                    if call.run is not None:
                        call.run.cancel()
                    call.fail(ErrorType.CANCELLED, "the runtime stopped before the call finished")
        self._ticker_stop.set()
        try:
            self.ref.stop(block=True, timeout=5.0)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
