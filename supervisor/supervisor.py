"""The supervisor: keeps the tool actors alive and is the one source of truth about them.

OTP is the model (one_for_one, restart types, restart intensity, backoff),
built on pykka, which has none of it. The supervisor is itself an actor: the
tool actors report to it (calls queued, started, finished, breaker changes,
starts and crashes), and everything an operator sees — metrics, status,
health — is derived from that one stream inside its mailbox, so no other
part keeps a copy of these numbers. Death is seen through the actors'
`on_failure` reports; a hang is seen through a ping each tool actor must
answer within a deadline, because a blocked thread looks alive to pykka.

Whoever answers a call counts it, and only the winner of the answer does
(`Call.settle`), so a call raced by a crash, a hang, a cancel and a shutdown
is still answered and counted exactly once.

`Supervisor` is the thread-safe handle the runtime holds; `SupervisorActor`
is the actor behind it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.breaker import BreakerState, CircuitBreaker
from actors.events import ActorCrashed, ActorStarted, BreakerChanged, CallFinished, CallQueued, CallStarted
from actors.inbox import DeferringInbox
from actors.reply import Reply, ThreadReply
from actors.results import CallOutcome, ErrorType
from actors.tool import Call, Cancel, Drain, ForceBreaker, Ping, Restart, ToolActor, outcome_label
from supervisor.config import FaultSettings, Settings
from supervisor.faults import FaultPlan
from supervisor.health import HealthChecker
from supervisor.metrics import Metrics
from supervisor.restarts import RestartPolicy, RestartType
from supervisor.slots import Refusal, ToolSlot
from supervisor.status import BreakerStatus, RuntimeInfo, Status, ToolStatus
from supervisor.version import VERSION

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class BeginShutdown:
    """Serve no more: every slot stops, stashes are answered; returns the refs still to drain."""


@dataclass(frozen=True)
class FinishShutdown:
    """Every actor has stopped: answer whatever a dead or hung incarnation still held."""


_QUERIES = (GetStatus, GetMetrics, Control, BeginShutdown, FinishShutdown)
# Events that only update the books: they wait in the inbox for the next message that wakes the supervisor.
_BOOKKEEPING = (CallQueued, CallStarted, CallFinished, Refused)
_PAST = {"crash": "crashed", "hang": "hung", "operator": "was restarted by an operator"}


class SupervisorActor(pykka.ThreadingActor):
    @staticmethod
    def _create_actor_inbox() -> Any:
        return DeferringInbox(lambda message: isinstance(message, _BOOKKEEPING))

    def __init__(
        self,
        settings: Settings,
        specs: dict[str, Any],
        slots: dict[str, ToolSlot],
        plan: FaultPlan,
        health: HealthChecker,
        *,
        on_escalate: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.sup = settings.supervisor
        self.plan = plan
        self.health = health
        self.on_escalate = on_escalate
        self.clock = clock
        self.started_at = clock()
        self.metrics = Metrics(specs, VERSION)
        self.slots = slots
        # call_id -> (tool, "queued" | "running"), with per-tool tallies: the books behind the gauges.
        self.calls: dict[str, tuple[str, str]] = {}
        self.load: dict[str, dict[str, int]] = {name: {"queued": 0, "running": 0} for name in specs}
        self.outcomes: dict[str, dict[str, int]] = {name: {} for name in specs}
        self._timers: set[threading.Timer] = set()

    # --- life ---------------------------------------------------------------------

    def on_start(self) -> None:
        for slot in self.slots.values():
            self._start_child(slot)

    def on_stop(self) -> None:
        self._cancel_timers()

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception:
            if isinstance(message, _QUERIES):
                raise  # the asker gets the exception; the supervisor carries on
            # An event the supervisor cannot digest must not take supervision down with it.
            logger.exception("supervisor could not handle %s", type(message).__name__)
            return None

    def _handle(self, message: Any) -> Any:
        match message:
            case CallQueued(tool, call_id):
                self._track(call_id, tool, "queued")
            case CallStarted(tool, call_id):
                self._track(call_id, tool, "running")
            case CallFinished(tool, call_id, outcome, duration, ran):
                self._untrack(call_id)
                self._count(tool, outcome, duration, ran)
            case Refused(tool, outcome):
                self._count(tool, outcome, 0.0, False)
            case BreakerChanged(tool, _old, new, _reason):
                self.metrics.set_breaker(tool, new)
            case ActorStarted(tool, incarnation, at):
                slot = self.slots[tool]
                if incarnation == slot.incarnation and slot.died_at is not None:
                    self.metrics.restart_finished(tool, max(0.0, at - slot.died_at))
                    slot.died_at = None
            case ActorCrashed(tool, incarnation, reason):
                slot = self.slots[tool]
                if slot.restart_requested:
                    self._child_died(slot, incarnation, "operator", "restart requested")
                else:
                    self._child_died(slot, incarnation, "crash", reason)
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
            case BeginShutdown():
                return self._begin_shutdown()
            case FinishShutdown():
                self._finish_shutdown()
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
        if slot.install(ref, incarnation, retired):
            self.metrics.tool_up.labels(slot.name).set(1)
        else:
            retired.set()  # stopped meanwhile: this incarnation never serves
            ref.stop(block=False)

    def _child_died(self, slot: ToolSlot, incarnation: int, kind: str, reason: str) -> None:
        old = slot.ref
        swept = slot.sweep(incarnation)
        if swept is None:
            return  # a report from an incarnation already replaced, or the runtime is stopping
        slot.died_at = self.clock()
        slot.restart_requested = False
        # A trial call lost with its actor must not leave the breaker waiting for it forever.
        slot.breaker.record_neutral()
        for call_id in [c for c, (tool, _) in self.calls.items() if tool == slot.name]:
            self._untrack(call_id)  # queued ones come back as CallQueued from the next incarnation
        for call in swept.running:
            message = f"{slot.name} {_PAST[kind]} while the call ran; retry it"
            self._settle(call, call.failure(ErrorType.ACTOR_RESTARTED, message, retry_after_sec=0.0))
        for call in swept.cancelled:
            self._settle(call, call.failure(ErrorType.CANCELLED, "the call was cancelled"))
        slot.restarts += 1
        slot.last_restart_reason = f"{kind}: {reason}"
        self.metrics.restarts.labels(slot.name, kind).inc()
        self.metrics.tool_up.labels(slot.name).set(0)
        if kind == "hang" and old is not None:
            old.stop(block=False)  # taken up if the hang ever ends; retired, it touches nothing
        if kind == "operator":
            self._start_child(slot)
            return
        decision = slot.policy.on_death(self.clock())
        if decision.restart:
            self._schedule_start(slot, decision.delay_sec)
            return
        self._give_up(slot, decision.reason or f"{slot.settings.restart} tools are not restarted")
        if decision.intensity_exceeded and self.sup.on_intensity_exceeded == "escalate" and self.on_escalate:
            threading.Thread(
                target=self.on_escalate, args=(f"{slot.name}: {decision.reason}",), name="labrecon-escalate", daemon=True
            ).start()

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

    def _cancel_timers(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()

    def _give_up(self, slot: ToolSlot, reason: str) -> None:
        slot.set_state("failed", reason)
        for call in slot.take_stash():
            self._settle(call, call.failure(ErrorType.TOOL_FAILED, failed_message(slot.name, reason)))

    def _settle(self, call: Call, outcome: CallOutcome) -> None:
        duration = self.clock() - call.admitted_at
        call.settle(outcome, lambda o: self._count(call.prepared.tool, outcome_label(o), duration, call.started))

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
            self._breaker_forced(slot)
            slot.set_state("restarting")
            self._start_child(slot)
            return f"{slot.name} reset and serving again"
        if action == "restart":
            if slot.state != "running" or slot.ref is None:
                return f"{slot.name} is {slot.state}; use reset for a failed tool"
            # The actor is made to fail on its own thread, after what it is doing now,
            # so the restart takes the crash path and no call is caught half-started.
            slot.restart_requested = True
            slot.ref.tell(Restart("restart requested by an operator"))
            return f"{slot.name} restarting (incarnation {slot.incarnation} is being replaced)"
        if action in ("breaker_open", "breaker_closed"):
            state = BreakerState.OPEN if action == "breaker_open" else BreakerState.CLOSED
            if slot.state == "running" and slot.ref is not None:
                slot.ref.tell(ForceBreaker(state))  # the actor owns the breaker while it serves
            else:
                slot.breaker.force(state, "operator")  # no actor serves: nobody else touches it
                self._breaker_forced(slot)
            return f"{slot.name} breaker forced {state.value}"
        raise ValueError(f"unknown control action {action!r}")

    def _breaker_forced(self, slot: ToolSlot) -> None:
        self.metrics.set_breaker(slot.name, slot.breaker.state.value)

    # --- stopping -----------------------------------------------------------------

    def _begin_shutdown(self) -> list[pykka.ActorRef[Any]]:
        self._cancel_timers()
        refs = []
        for slot in self.slots.values():
            ref = slot.stop()
            if ref is not None:
                refs.append(ref)
            for call in slot.take_stash():
                self._settle(call, call.failure(ErrorType.CANCELLED, "the runtime is stopping"))
        return refs

    def _finish_shutdown(self) -> None:
        for slot in self.slots.values():
            for call in slot.take_pending():
                if call.run is not None:
                    call.run.cancel()
                self._settle(call, call.failure(ErrorType.CANCELLED, "the runtime stopped before the call finished"))

    # --- books --------------------------------------------------------------------

    def _track(self, call_id: str, tool: str, state: str) -> None:
        previous = self.calls.get(call_id)
        if previous is not None:
            self.load[previous[0]][previous[1]] -= 1
        self.calls[call_id] = (tool, state)
        self.load[tool][state] += 1
        self._gauge(tool)

    def _untrack(self, call_id: str) -> None:
        previous = self.calls.pop(call_id, None)
        if previous is not None:
            self.load[previous[0]][previous[1]] -= 1
            self._gauge(previous[0])

    def _count(self, tool: str, outcome: str, duration: float, ran: bool) -> None:
        self.metrics.call_finished(tool, outcome, duration, ran)
        counts = self.outcomes[tool]
        counts[outcome] = counts.get(outcome, 0) + 1

    def _gauge(self, tool: str) -> None:
        load = self.load[tool]
        self.metrics.set_load(tool, in_flight=load["running"], queued=load["queued"])

    def _status(self) -> Status:
        tools = {}
        for name, slot in self.slots.items():
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
                in_flight=self.load[name]["running"],
                queued=self.load[name]["queued"],
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


def failed_message(tool: str, reason: str) -> str:
    return f"{tool} is disabled ({reason}); an operator can reset it"


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
        self.health = HealthChecker(settings, specs)
        self.ref = SupervisorActor.start(
            settings, specs, self.slots, self.plan, self.health, on_escalate=on_escalate, clock=clock
        )
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
            outcome = call.failure(ErrorType.TOOL_FAILED, failed_message(tool, refusal.reason or "restart limit"))
        elif refusal.state == "stopped":
            outcome = call.failure(ErrorType.CANCELLED, "the runtime is stopping")
        else:
            message = f"{tool} is restarting and its waiting room is full"
            outcome = call.failure(ErrorType.RESOURCE_EXHAUSTED, message, retry_after_sec=1.0)
        call.settle(outcome, lambda o: self.record_refusal(tool, o.error.error_type))

    def record_refusal(self, tool: str, error_type: ErrorType) -> None:
        """Count a call answered before it reached any actor."""
        self._tell(Refused(tool, error_type.value))

    def cancel(self, tool: str, call_id: str) -> bool:
        slot = self.slots.get(tool)
        if slot is None:
            return False
        stashed, ref = slot.cancel(call_id)
        if stashed is not None:
            outcome = stashed.failure(ErrorType.CANCELLED, "the call was cancelled before it started")
            stashed.settle(outcome, lambda o: self.record_refusal(tool, o.error.error_type))
            return True
        if ref is None:
            return False
        try:
            ref.tell(Cancel(call_id))
        except pykka.ActorDeadError:
            pass  # the sweep answers it: cancel_requested is set
        return True

    def _tell(self, message: Any) -> None:
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            pass

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
        """Admit nothing new, drain within `grace`, then stop every actor; every call is answered.

        The state changes happen in the supervisor's own mailbox, so no
        restart can race the shutdown; only the waiting happens here.
        """
        deadline = time.monotonic() + max(0.0, grace)
        refs: list[pykka.ActorRef[Any]] = self.ref.ask(BeginShutdown())
        drains: list[Reply[None]] = []
        for ref in refs:
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
        # Stopping an actor waits for its process groups to be gone: TERM, the grace, KILL.
        stop_timeout = max(slot.settings.kill_grace_sec for slot in self.slots.values()) + 5.0
        for ref in refs:
            try:
                ref.stop(block=True, timeout=stop_timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass  # hung: abandoned; its daemon thread cannot hold the process
        for slot in self.slots.values():
            slot.retired.set()
        self.ref.ask(FinishShutdown())
        self.health.close()
        self._ticker_stop.set()
        try:
            self.ref.stop(block=True, timeout=5.0)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
