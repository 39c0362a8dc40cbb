"""Changing a tool while it serves: new limits, a new incarnation, out of service and back.

Runs on the supervisor actor's thread only, beside the restarter. New limits reach the serving
incarnation as a message. A replaced or disabled incarnation is retired: it finishes what it holds
(a disabled one answers its queue `tool_disabled` first) while new calls go to its successor, or are
refused; it gets `[reload] drain_sec`, after which what it still runs is cancelled and answered.
A retired incarnation that crashes is swept like a serving one, without a restart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pykka

from actors.reply import ThreadReply
from actors.results import ErrorType
from actors.settings import PolicySettings, ToolSettings
from actors.tool import Call, Configure, Disable, Drain
from supervisor.ledger import CallLedger
from supervisor.messages import Refused, Retired, RetireOver
from supervisor.pools import pool_settings
from supervisor.restarter import Restarter
from supervisor.slots import AnswerCall, Retiring, ToolSlot, refusal_outcome, slots_of

ChangeKind = Literal["limits", "replace", "disable", "enable"]


@dataclass(frozen=True)
class ToolChange:
    """One tool's part of a reload, or an operator's switch."""

    tool: str
    kind: ChangeKind
    settings: ToolSettings
    reason: str = ""  # for "disable": what callers are told


class ToolChanger:
    def __init__(
        self,
        slots: dict[str, ToolSlot],
        restarter: Restarter,
        *,
        ledger: CallLedger,
        answer: AnswerCall,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.slots = slots
        self.restarter = restarter
        self.ledger = ledger
        self.answer = answer
        self.wall_clock = wall_clock

    def apply(self, change: ToolChange, drain_sec: float) -> None:
        """Apply `change` to every slot of its tool (one per pool), each with its pool's share of the settings."""
        for slot in slots_of(self.slots, change.tool):
            settings = pool_settings(change.tool, change.settings, slot.pool)
            if change.kind == "limits":
                self._limits(slot, settings)
            elif change.kind == "replace":
                self._replace(slot, settings, drain_sec)
            elif change.kind == "disable":
                self._disable(slot, settings, change.reason, drain_sec)
            else:
                self._enable(slot, settings)

    def policy_changed(self, policy: PolicySettings) -> None:
        """A new target policy: each pool's runners check calls against it from now on."""
        self.restarter.policy = policy
        for slot in self.slots.values():
            if slot.pool is not None and slot.state == "running" and slot.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):  # its successor starts with the new policy
                    slot.ref.tell(Configure(slot.settings, policy))

    # --- the four changes -------------------------------------------------------------

    def _limits(self, slot: ToolSlot, settings: ToolSettings) -> None:
        slot.configure(settings)
        if slot.state == "running" and slot.ref is not None:
            try:
                slot.ref.tell(Configure(settings))  # the serving actor owns the breaker
                return
            except pykka.ActorDeadError:
                pass  # its crash report is on the way; its successor starts with the new settings
        slot.breaker.configure(settings.breaker)  # nobody serves: nobody else touches it

    def _replace(self, slot: ToolSlot, settings: ToolSettings, drain_sec: float) -> None:
        """A new incarnation serves new calls at once; the old one hands it its queue and finishes what it runs.

        A new binary is a new tool as far as failures go: the successor gets a breaker of its own, so the
        old binary's failures neither open the new one's circuit nor strand a trial call on the old one.
        """
        slot.configure(settings)
        if slot.state != "running":
            return  # restarting, failed or disabled: its next incarnation starts with the new settings
        slot.breaker = slot.breaker.fresh(settings.breaker)
        child = self.restarter.spawn(slot)
        retiring = slot.take_over(child.ref, child.incarnation, child.retired)
        if retiring is None:
            child.discard()
            return
        self.ledger.child_installed(slot.name)
        self.ledger.breaker_changed(slot.name, slot.breaker.state.value)
        self._drain(slot, retiring, drain_sec, lambda reply: Drain(reply, hand_back=self._hand_back(slot)))

    def _disable(self, slot: ToolSlot, settings: ToolSettings, reason: str, drain_sec: float) -> None:
        slot.configure(settings)
        if slot.state == "disabled":
            slot.set_state("disabled", reason)  # a new reason replaces the old one; since stays
            return
        retiring = slot.retire("disabled")
        for call in slot.disable(reason, self.wall_clock()):
            self.answer(call, call.failure(ErrorType.TOOL_DISABLED, reason))
        self.ledger.serving_changed(slot.name, False)
        if retiring is not None:
            self._drain(slot, retiring, drain_sec, lambda reply: Disable(reason, reply))
        for earlier in list(slot.retiring.values()):  # replaced ones still draining answer their queues too
            if earlier is not retiring:
                with contextlib.suppress(pykka.ActorDeadError):
                    earlier.ref.tell(Disable(reason, ThreadReply()))

    def _enable(self, slot: ToolSlot, settings: ToolSettings) -> None:
        """Back in service with a fresh start: a new incarnation, a new breaker, no restart history."""
        slot.configure(settings)
        if slot.enable():
            slot.policy.reset()
            slot.breaker = slot.breaker.fresh(settings.breaker)
            self.ledger.breaker_changed(slot.name, slot.breaker.state.value)
            self.restarter.start_child(slot)

    def _hand_back(self, slot: ToolSlot) -> Callable[[Call], None]:
        """Where a retired incarnation sends the calls it never started (on its own thread): to its successor."""

        def hand_back(call: Call) -> None:
            if not slot.reroute(call):
                outcome = refusal_outcome(call, slot.state, slot.reason)
                label = outcome.error.error_type if outcome.error is not None else ErrorType.INTERNAL
                call.reply.resolve(outcome, before=lambda _outcome: self._tell_self(Refused(slot.name, label.value)))

        return hand_back

    # --- retired incarnations -----------------------------------------------------------

    def _drain(self, slot: ToolSlot, retiring: Retiring, drain_sec: float, message: Callable[[Any], Any]) -> None:
        """Tell the retired incarnation to finish; it reports `Retired` when done, or `RetireOver` ends it."""
        reply: ThreadReply[None] = ThreadReply()
        done = Retired(slot.name, retiring.incarnation)
        reply.on_resolved(lambda _none: self._tell_self(done))
        retiring.timer = self.restarter.tell_later(drain_sec, RetireOver(slot.name, retiring.incarnation, drain_sec))
        with contextlib.suppress(pykka.ActorDeadError):  # its crash report is on the way; the sweep answers
            retiring.ref.tell(message(reply))

    def retired(self, tool: str, incarnation: int) -> None:
        """A retired incarnation has finished what it held (or died first, its crash report on the way): it stops."""
        slot = self.slots[tool]
        taken = slot.take_retiring(incarnation)
        if taken is None:
            return
        retiring, held = taken
        self._end(retiring)
        self._hand_on(slot, held, "stopped")  # normally nothing: a drained incarnation answered all it held

    def retire_over(self, tool: str, incarnation: int, drain_sec: float) -> None:
        """The drain time is over: what the retired incarnation still runs is cancelled and answered."""
        taken = self.slots[tool].take_retiring(incarnation)
        if taken is None:
            return
        retiring, held = taken
        self._end(retiring)
        for call in held:
            self._answer_cut_short(tool, call, retiring, drain_sec)

    def crashed(self, slot: ToolSlot, incarnation: int, reason: str) -> bool:
        """A retired incarnation died: answer what it ran, hand on what it never started; False if not retired."""
        taken = slot.take_retiring(incarnation)
        if taken is None:
            return False
        retiring, held = taken
        self._end(retiring)
        self._hand_on(slot, held, f"crashed ({reason})")
        return True

    def _hand_on(self, slot: ToolSlot, held: list[Call], what: str) -> None:
        """Calls a retired incarnation left unanswered: what it ran may be retried, what it never started goes on."""
        for call in held:
            if call.cancel_requested:
                self.answer(call, call.failure(ErrorType.CANCELLED, "the call was cancelled"))
            elif call.started:
                message = f"{slot.name} {what} while the call ran; retry it"
                self.answer(call, call.failure(ErrorType.ACTOR_RESTARTED, message, retry_after_sec=0.0))
            elif not slot.reroute(call):
                self.answer(call, refusal_outcome(call, slot.state, slot.reason))

    def _answer_cut_short(self, tool: str, call: Call, retiring: Retiring, drain_sec: float) -> None:
        """The drain time is over: the run is ended and the call answered `cancelled`, never retried."""
        if call.run is not None:
            call.run.cancel()
        why = "was disabled" if retiring.why == "disabled" else "was replaced by a reload"
        message = f"{tool} {why}; the call had {drain_sec:g}s to finish and was cancelled"
        self.answer(call, call.failure(ErrorType.CANCELLED, message))

    def _end(self, retiring: Retiring) -> None:
        if retiring.timer is not None:
            self.restarter.cancel_later(retiring.timer)
        retiring.retired.set()  # from now on it touches nothing
        with contextlib.suppress(pykka.ActorDeadError):
            retiring.ref.stop(block=False)

    def _tell_self(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.restarter.parent.tell(message)
