"""The supervisor actor: one thread that keeps the tool actors alive and answers for them.

Every message — a tool actor's event, a tick, an operator's query — is handled here one at a time,
so the restart state (`Restarter`) and the numbers (`CallLedger`) have a single owner and need
no locks. A call the supervisor answers itself is counted only if that answer wins
(`Reply.resolve`), so each call is counted exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pykka
from prometheus_client.registry import Collector

from actors.breaker import BreakerState
from actors.events import ActorCrashed, ActorStarted, BreakerChanged, CallFinished, CallQueued, CallStarted
from actors.results import CallOutcome
from actors.tool import Call, ForceBreaker, outcome_label
from actors.tools.base import ToolSpec
from supervisor.config import Settings
from supervisor.faults import FaultPlan
from supervisor.health import HealthChecker
from supervisor.ledger import CallLedger
from supervisor.messages import (
    QUERIES,
    BeginShutdown,
    ChangeTools,
    Control,
    FinishShutdown,
    GetMetrics,
    GetStatus,
    Refused,
    Retired,
    RetireOver,
    Retried,
    StartChild,
    Tick,
)
from supervisor.metrics import Metrics
from supervisor.restarter import Placement, Restarter, place_here
from supervisor.shutdown import answer_what_is_left, stop_serving
from supervisor.slots import ToolSlot
from supervisor.status import BreakerStatus, ClusterStatus, RuntimeInfo, Status, ToolStatus
from supervisor.tool_changes import ToolChange, ToolChanger
from supervisor.version import VERSION

logger = logging.getLogger(__name__)


class SupervisorActor(pykka.ThreadingActor):
    def __init__(
        self,
        settings: Settings,
        specs: Mapping[str, ToolSpec],
        slots: dict[str, ToolSlot],
        plan: FaultPlan,
        health: HealthChecker,
        *,
        on_escalate: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        collectors: Iterable[Collector] = (),
        placement: Placement = place_here,
        cluster: Callable[[], ClusterStatus] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.cluster = cluster  # the scanner pools' nodes as last seen; None when every tool runs here
        self.slots = slots
        self.plan = plan
        self.health = health
        # Counted per slot; with pools, also per tool, for calls refused before a pool was chosen.
        counted = [*slots, *(name for name in specs if name not in slots)]
        self.metrics = Metrics(counted, VERSION, collectors)
        self.ledger = CallLedger(counted, clock=clock, observer=self.metrics)
        self.restarter = Restarter(
            slots,
            settings.supervisor,
            parent=self.actor_ref,
            plan=plan,
            ledger=self.ledger,
            answer=self.answer_call,
            on_escalate=on_escalate,
            clock=clock,
            policy=settings.policy,
            placement=placement,
        )
        self.changer = ToolChanger(slots, self.restarter, ledger=self.ledger, answer=self.answer_call)
        for name, slot in slots.items():
            if slot.state == "disabled":
                self.ledger.serving_changed(name, False)

    def on_start(self) -> None:
        self.restarter.start()

    def on_stop(self) -> None:
        self.restarter.stop()

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except Exception:
            if isinstance(message, QUERIES):
                raise  # the asker gets the exception; the supervisor carries on
            # An event the supervisor cannot digest must not take supervision down with it.
            logger.exception("supervisor could not handle %s", type(message).__name__)
            return None

    def _handle(self, message: Any) -> Any:
        match message:
            case CallQueued(tool, call_id):
                self.ledger.call_queued(tool, call_id)
            case CallStarted(tool, call_id):
                self.ledger.call_started(tool, call_id)
            case CallFinished(tool, call_id, outcome, duration, ran):
                self.ledger.call_finished(tool, call_id, outcome, duration, ran)
            case Refused(tool, outcome):
                self.ledger.call_refused(tool, outcome)
            case Retried(tool, reason):
                self.ledger.call_retried(tool, reason)
            case BreakerChanged(tool, _old, _new, _reason):
                # The serving incarnation's breaker says where it stands; a retired one's has no say any more.
                self.ledger.breaker_changed(tool, self.slots[tool].breaker.state.value)
            case ActorStarted(tool, incarnation, at):
                self.restarter.child_reading(tool, incarnation, at)
            case ActorCrashed(tool, incarnation, reason):
                if not self.changer.crashed(self.slots[tool], incarnation, reason):
                    self.restarter.child_crashed(tool, incarnation, reason)
            case Retired(tool, incarnation):
                self.changer.retired(tool, incarnation)
            case RetireOver(tool, incarnation, drain_sec):
                self.changer.retire_over(tool, incarnation, drain_sec)
            case ChangeTools(changes, settings, specs):
                self._change_tools(changes, settings, specs)
            case StartChild(tool, after):
                self.restarter.backoff_over(tool, after)
            case Tick():
                self.restarter.check_pings()
            case Control(action, tool):
                return self._control(action, self.slots[tool])
            case GetStatus():
                return self._status()
            case GetMetrics():
                return self.metrics.text()
            case BeginShutdown():
                self.restarter.stop()
                return stop_serving(self.slots, self.answer_call)
            case FinishShutdown():
                answer_what_is_left(self.slots, self.answer_call)
            case _:
                raise TypeError(f"supervisor got an unknown message {message!r}")
        return None

    def _change_tools(
        self, changes: tuple[ToolChange, ...], settings: Settings | None, specs: Mapping[str, ToolSpec] | None
    ) -> None:
        drain_sec = (settings or self.settings).reload.drain_sec
        for change in changes:
            self.changer.apply(change, drain_sec)
        if settings is not None:
            if settings.policy != self.settings.policy:
                self.changer.policy_changed(settings.policy)
            self.settings = settings
        if specs is not None:
            self.health.reconfigure(self.settings, specs)

    def answer_call(self, call: Call, outcome: CallOutcome) -> None:
        """Answer a call an actor held, and count it, unless somebody answered it already."""
        tool = call.prepared.slot

        def count(answer: CallOutcome) -> None:
            self.ledger.call_answered(tool, outcome_label(answer), call.admitted_at, call.started, call.call_id)

        call.reply.resolve(outcome, before=count)

    def _control(self, action: str, slot: ToolSlot) -> str:
        if action == "reset":
            return self.restarter.reset(slot)
        if action == "restart":
            return self.restarter.restart(slot)
        if action in ("breaker_open", "breaker_closed"):
            state = BreakerState.OPEN if action == "breaker_open" else BreakerState.CLOSED
            if slot.state == "running" and slot.ref is not None:
                slot.ref.tell(ForceBreaker(state))  # the actor owns the breaker while it serves
            else:
                slot.breaker.force(state, "operator")  # no actor serves: nobody else touches it
                self.ledger.breaker_changed(slot.name, slot.breaker.state.value)
            return f"{slot.name} breaker forced {state.value}"
        raise ValueError(f"unknown control action {action!r}")

    def _status(self) -> Status:
        cluster = self.cluster() if self.cluster is not None else None
        tools = {}
        for name, slot in self.slots.items():
            numbers = self.ledger.numbers(name)
            breaker = slot.breaker
            tools[name] = ToolStatus(
                name=name,
                state=slot.state,
                incarnation=slot.incarnation,
                restarts=numbers.restarts,
                retries=numbers.retries,
                last_restart_reason=numbers.last_restart_reason,
                failed_reason=slot.reason if slot.state == "failed" else None,
                disabled_reason=slot.reason if slot.state == "disabled" else None,
                disabled_since=slot.disabled_since,
                retiring=len(slot.retiring),
                breaker=BreakerStatus(
                    state=breaker.state.value,
                    consecutive_failures=breaker.consecutive_failures,
                    retry_after_sec=breaker.retry_after(),
                ),
                in_flight=numbers.in_flight,
                queued=numbers.queued,
                stashed=len(slot.stash),
                calls=numbers.calls,
                p50_sec=numbers.p50_sec,
                p95_sec=numbers.p95_sec,
                restart_p50_sec=numbers.restart_p50_sec,
                restart_p99_sec=numbers.restart_p99_sec,
            )
        return Status(
            runtime=RuntimeInfo(
                version=VERSION,
                pid=os.getpid(),
                uptime_sec=round(self.ledger.uptime_sec(), 3),
                config_digest=self.settings.digest(),
            ),
            tools=tools,
            faults=self.plan.list(),
            health=self.health.evaluate(tools, cluster),
            cluster=cluster,
        )
