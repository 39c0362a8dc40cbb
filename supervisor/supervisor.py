"""The supervisor's handle: what the runtime holds, safe to use from any thread.

Calls are routed straight to the current tool actor through the tool's slot, without a hop through
the supervisor actor's mailbox; everything else (events, queries, controls) goes to that actor as a
message. A call the handle refuses is answered here and counted by the actor (`Refused`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import pykka
from prometheus_client.registry import Collector

from actors.results import ErrorType
from actors.tool import Call, Cancel
from actors.tools.base import ToolSpec
from supervisor.config import FaultSettings, Settings
from supervisor.faults import FaultPlan
from supervisor.health import HealthChecker
from supervisor.messages import ChangeTools, Control, GetMetrics, GetStatus, Refused, Retried
from supervisor.pools import slot_name
from supervisor.restarter import Placement, place_here
from supervisor.shutdown import shut_down
from supervisor.slots import Refusal, build_slots, refusal_outcome, slots_of
from supervisor.status import ClusterStatus, Status
from supervisor.supervisor_actor import SupervisorActor
from supervisor.tool_changes import ToolChange


def serving_specs(settings: Settings, specs: Mapping[str, ToolSpec]) -> dict[str, ToolSpec]:
    """The tools the config enables."""
    return {name: spec for name, spec in specs.items() if getattr(settings.tools, name).enabled}


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        specs: Mapping[str, ToolSpec],
        *,
        on_escalate: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        collectors: Iterable[Collector] = (),
        placement: Placement = place_here,
        cluster: Callable[[], ClusterStatus] | None = None,
    ) -> None:
        """`collectors` add numbers others own to the metrics (read when scraped, never copied); `placement`
        says where each slot's incarnations run their processes; `cluster` reads the scanner pools' nodes
        for status and health (never waiting on the cluster)."""
        self.plan = FaultPlan(settings.faults)
        self.slots = build_slots(settings, specs, clock)  # shared with the actor; thread-safe
        self.stash_limit = settings.supervisor.stash_limit
        self.health = HealthChecker(settings, serving_specs(settings, specs))
        self.ref = SupervisorActor.start(
            settings, specs, self.slots, self.plan, self.health, on_escalate=on_escalate, clock=clock,
            collectors=collectors, placement=placement, cluster=cluster,
        )

    # --- calls --------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        slot = self.slots[call.prepared.slot]
        refusal = slot.route(call, self.stash_limit)
        if refusal is not None:
            self._refuse(call, refusal)

    def _refuse(self, call: Call, refusal: Refusal) -> None:
        tool = call.prepared.slot
        outcome = refusal_outcome(call, refusal.state, refusal.reason)
        error_type = outcome.error.error_type if outcome.error is not None else ErrorType.INTERNAL
        call.reply.resolve(outcome, before=lambda _outcome: self.record_refusal(tool, error_type))

    def record_refusal(self, tool: str, error_type: ErrorType) -> None:
        """Count a call answered before it reached any actor (`tool`: the slot it was meant for)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.ref.tell(Refused(tool, error_type.value))

    def record_retry(self, tool: str, reason: str) -> None:
        """Count a call that will be tried again (`reason`: a `supervisor.retries.RetryReason`)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.ref.tell(Retried(tool, reason))

    def cancel(self, tool: str, call_id: str) -> bool:
        slot = self.slots.get(tool)
        if slot is None:
            return False
        stashed, ref = slot.cancel(call_id)
        if stashed is not None:
            outcome = stashed.failure(ErrorType.CANCELLED, "the call was cancelled before it started")
            stashed.reply.resolve(outcome, before=lambda _outcome: self.record_refusal(tool, ErrorType.CANCELLED))
            return True
        if ref is None:
            return False
        with contextlib.suppress(pykka.ActorDeadError):  # the sweep answers it: cancel_requested is set
            ref.tell(Cancel(call_id))
        return True

    # --- operators ------------------------------------------------------------------

    def status(self, timeout: float | None = 10.0) -> Status:
        return self.ref.ask(GetStatus(), block=True, timeout=timeout)

    def metrics_text(self, timeout: float | None = 10.0) -> bytes:
        return self.ref.ask(GetMetrics(), block=True, timeout=timeout)

    def control(self, action: str, tool: str, timeout: float | None = 10.0) -> str:
        """An operator's action on a tool (on each of its pools) or on one slot ("nmap@dmz")."""
        names = [tool] if tool in self.slots else [slot.name for slot in slots_of(self.slots, tool)]
        if not names:
            raise KeyError(tool)
        return "; ".join(self.ref.ask(Control(action, name), block=True, timeout=timeout) for name in names)

    def change_tools(
        self,
        changes: Sequence[ToolChange],
        settings: Settings | None = None,
        specs: Mapping[str, ToolSpec] | None = None,
        timeout: float | None = 10.0,
    ) -> None:
        """Apply tool changes as one supervisor message; with `settings`, they are the config in force."""
        self.ref.ask(ChangeTools(tuple(changes), settings, specs), block=True, timeout=timeout)

    def inject(self, fault: FaultSettings) -> int:
        """Add a fault rule for a tool, or for the tool on one pool; KeyError when nothing serves that."""
        if not slots_of(self.slots, fault.tool):
            raise KeyError(fault.tool)
        if fault.pool is not None and slot_name(fault.tool, fault.pool) not in self.slots:
            raise KeyError(slot_name(fault.tool, fault.pool))
        return self.plan.add(fault)

    def clear_faults(self, rule_id: int | None = None, tool: str | None = None) -> int:
        return self.plan.clear(rule_id, tool=tool)

    # --- stopping -----------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Admit nothing new, drain within `grace`, then stop every actor; every call is answered."""
        shut_down(self.ref, self.slots, self.plan, self.health, grace)
