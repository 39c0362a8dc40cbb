"""Starting tool actors, seeing them die or hang, and restarting them — or giving up on them.

Runs on the supervisor actor's thread only; its timers and its ticker just send that actor a message.
A death is seen through the actor's crash report, a hang through a ping left unanswered past its
deadline. What the dead incarnation held is answered or handed on (`ToolSlot.sweep`), and whether and
when the tool comes back is the pure restart policy's decision (`supervisor.restarts`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.breaker import BreakerState
from actors.launch import LAUNCH_HERE, Launch
from actors.reply import ThreadReply
from actors.results import ErrorType
from actors.settings import PolicySettings
from actors.tool import Ping, Restart, ToolActor
from supervisor.config import SupervisionSettings
from supervisor.faults import FaultPlan
from supervisor.ledger import CallLedger
from supervisor.messages import StartChild, Tick
from supervisor.slots import AnswerCall, ToolSlot, failed_message

Placement = Callable[[ToolSlot, PolicySettings], Launch]
"""Where a slot's next incarnation runs its processes: here, or on a runner of the slot's pool that checks
each call against the policy given (and those the incarnation is told of later)."""


def place_here(slot: ToolSlot, policy: PolicySettings) -> Launch:
    return LAUNCH_HERE


_PAST = {"crash": "crashed", "hang": "hung", "operator": "was restarted by an operator"}


class Restarter:
    def __init__(
        self,
        slots: dict[str, ToolSlot],
        settings: SupervisionSettings,
        *,
        parent: pykka.ActorRef[Any],
        plan: FaultPlan,
        ledger: CallLedger,
        answer: AnswerCall,
        on_escalate: Callable[[str], None] | None,
        clock: Callable[[], float],
        policy: PolicySettings,
        placement: Placement = place_here,
    ) -> None:
        self.slots = slots
        self.placement = placement
        self.policy = policy  # the target policy in force, for the runners new incarnations get
        self.settings = settings
        self.parent = parent
        self.plan = plan
        self.ledger = ledger
        self.answer = answer
        self.on_escalate = on_escalate
        self.clock = clock
        self._timers: set[threading.Timer] = set()
        self._ticker = Ticker(parent, settings.ping_interval_sec)

    def start(self) -> None:
        """Start every tool's first incarnation, and the pings that look for hangs."""
        for slot in self.slots.values():
            if slot.state != "disabled":
                self.start_child(slot)
        self._ticker.start()

    def stop(self) -> None:
        """Start nothing more: pending restarts and pings are called off."""
        self._ticker.stop()
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()

    # --- starting -------------------------------------------------------------------

    def start_child(self, slot: ToolSlot) -> None:
        child = self.spawn(slot)
        if slot.install(child.ref, child.incarnation, child.retired):
            self.ledger.child_installed(slot.name)
        else:
            child.discard()  # stopped meanwhile: this incarnation never serves

    def spawn(self, slot: ToolSlot) -> Child:
        """Start the slot's next incarnation, with the slot's settings and breaker; not yet serving."""
        incarnation = slot.incarnation + 1
        retired = threading.Event()
        ref = ToolActor.start(
            slot.spec,
            slot.settings,
            name=slot.name,
            launch=self.placement(slot, self.policy),
            parent=self.parent,
            incarnation=incarnation,
            breaker=slot.breaker,
            faults=self.plan,
            retired=retired,
            clock=self.clock,
        )
        return Child(ref, incarnation, retired)

    def child_reading(self, tool: str, incarnation: int, at: float) -> None:
        """An incarnation reads its mailbox: if it is the current one, the tool's restart is over."""
        if incarnation == self.slots[tool].incarnation:
            self.ledger.child_reading(tool, at)

    def backoff_over(self, tool: str, after_incarnation: int) -> None:
        slot = self.slots[tool]
        if slot.incarnation == after_incarnation and slot.state == "restarting":
            self.start_child(slot)

    # --- deaths ---------------------------------------------------------------------

    def child_crashed(self, tool: str, incarnation: int, reason: str) -> None:
        slot = self.slots[tool]
        if slot.restart_requested:
            self._child_died(slot, incarnation, "operator", "restart requested")
        else:
            self._child_died(slot, incarnation, "crash", reason)

    def check_pings(self) -> None:
        """Ping every serving incarnation; one that left the last ping unanswered too long has hung."""
        now = self.clock()
        for slot in self.slots.values():
            if slot.state != "running" or slot.ref is None:
                continue
            if slot.ping is not None and not slot.ping.done:
                waited = now - slot.ping_sent_at
                if waited > self.settings.ping_deadline_sec:
                    self._child_died(slot, slot.incarnation, "hang", f"no answer to a ping for {waited:.1f}s")
                continue
            slot.ping = ThreadReply()
            slot.ping_sent_at = now
            with contextlib.suppress(pykka.ActorDeadError):  # its crash report is on the way
                slot.ref.tell(Ping(slot.ping))

    def _child_died(self, slot: ToolSlot, incarnation: int, kind: str, reason: str) -> None:
        old = slot.ref
        swept = slot.sweep(incarnation)
        if swept is None:
            return  # a report from an incarnation already replaced, or the runtime is stopping
        slot.restart_requested = False
        # A trial call lost with its actor must not leave the breaker waiting for it forever.
        slot.breaker.record_neutral()
        held = [call.call_id for call in (*swept.running, *swept.requeued, *swept.cancelled)]
        self.ledger.child_died(slot.name, kind, reason, held)
        for call in swept.running:
            message = f"{slot.name} {_PAST[kind]} while the call ran; retry it"
            self.answer(call, call.failure(ErrorType.ACTOR_RESTARTED, message, retry_after_sec=0.0))
        for call in swept.cancelled:
            self.answer(call, call.failure(ErrorType.CANCELLED, "the call was cancelled"))
        if kind == "hang" and old is not None:
            old.stop(block=False)  # taken up if the hang ever ends; retired, it touches nothing
        if kind == "operator":
            self.start_child(slot)
            return
        decision = slot.policy.on_death(self.clock())
        if decision.restart:
            self._start_after(slot, decision.delay_sec)
            return
        self._give_up(slot, decision.reason or f"{slot.settings.restart} tools are not restarted")
        if decision.intensity_exceeded and self.settings.on_intensity_exceeded == "escalate":
            self._escalate(f"{slot.name}: {decision.reason}")

    def _start_after(self, slot: ToolSlot, delay: float) -> None:
        if delay <= 0:
            self.start_child(slot)
            return
        self.tell_later(delay, StartChild(slot.name, slot.incarnation))

    def tell_later(self, delay: float, message: Any) -> threading.Timer:
        """Send the supervisor `message` after `delay` seconds, unless stopped (or the timer cancelled) first."""

        def fire() -> None:
            self._timers.discard(timer)
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(message)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()
        return timer

    def cancel_later(self, timer: threading.Timer) -> None:
        """Call off what `tell_later` would have sent."""
        timer.cancel()
        self._timers.discard(timer)

    def _give_up(self, slot: ToolSlot, reason: str) -> None:
        slot.set_state("failed", reason)
        for call in slot.take_stash():
            self.answer(call, call.failure(ErrorType.TOOL_FAILED, failed_message(slot.name, reason)))

    def _escalate(self, reason: str) -> None:
        """Hand the whole runtime's fate to its owner, on a thread of its own: it stops the supervisor."""
        if self.on_escalate is not None:
            threading.Thread(target=self.on_escalate, args=(reason,), name="labrecon-escalate", daemon=True).start()

    # --- operators ------------------------------------------------------------------

    def reset(self, slot: ToolSlot) -> str:
        if slot.state != "failed":
            return f"{slot.name} is {slot.state}, not failed; nothing to reset"
        slot.policy.reset()
        slot.breaker.force(BreakerState.CLOSED, "operator reset")
        self.ledger.breaker_changed(slot.name, slot.breaker.state.value)
        slot.set_state("restarting")
        self.start_child(slot)
        return f"{slot.name} reset and serving again"

    def restart(self, slot: ToolSlot) -> str:
        if slot.state == "disabled":
            return f"{slot.name} is disabled ({slot.reason}); enable it first"
        if slot.state != "running" or slot.ref is None:
            return f"{slot.name} is {slot.state}; use reset for a failed tool"
        # The actor is made to fail on its own thread, after what it is doing now,
        # so the restart takes the crash path and no call is caught half-started.
        slot.restart_requested = True
        slot.ref.tell(Restart("restart requested by an operator"))
        return f"{slot.name} restarting (incarnation {slot.incarnation} is being replaced)"


@dataclass(frozen=True)
class Child:
    """An incarnation started but not yet installed in its slot."""

    ref: pykka.ActorRef[Any]
    incarnation: int
    retired: threading.Event

    def discard(self) -> None:
        self.retired.set()  # it never serves, and touches nothing
        self.ref.stop(block=False)


class Ticker:
    """A daemon thread that tells the supervisor `Tick` every `interval` seconds until stopped."""

    def __init__(self, parent: pykka.ActorRef[Any], interval: float) -> None:
        self._parent = parent
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labrecon-supervisor-tick", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._parent.tell(Tick())
            except pykka.ActorDeadError:
                return
