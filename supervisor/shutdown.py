"""Stopping the supervisor: admit nothing new, drain within a grace period, stop every actor.

Every call is answered: stashed ones at once, running ones by their actor while it drains, and
whatever a dead or hung incarnation still held once every actor has stopped. The state changes
happen in the supervisor actor's mailbox (`stop_serving`, `answer_what_is_left`), so no restart
can race the shutdown; only the waiting happens on the caller's thread (`shut_down`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pykka

from actors.reply import ThreadReply
from actors.results import ErrorType
from actors.tool import Drain
from supervisor.faults import FaultPlan
from supervisor.health import HealthChecker
from supervisor.messages import BeginShutdown, FinishShutdown
from supervisor.slots import AnswerCall, ToolSlot

ActorRefs = list[pykka.ActorRef[Any]]


def shut_down(
    supervisor: pykka.ActorRef[Any],
    slots: dict[str, ToolSlot],
    plan: FaultPlan,
    health: HealthChecker,
    grace: float,
) -> None:
    """The whole stop sequence, on the caller's thread; returns once every call is answered."""
    deadline = time.monotonic() + max(0.0, grace)
    # Every slot stops admitting; stashed calls are answered; the serving actors are returned.
    refs: ActorRefs = supervisor.ask(BeginShutdown(), block=True)
    # Each serving actor finishes what it runs and holds, until the grace is over.
    _drain(refs, deadline)
    # Injected hangs and delays let their calls go.
    plan.release_all()
    # Stopping an actor waits for its process groups to be gone: TERM, the kill grace, KILL.
    _stop_actors(refs, timeout=max(slot.settings.kill_grace_sec for slot in slots.values()) + 5.0)
    # No incarnation touches its calls any more, not even one that wakes from a hang.
    for slot in slots.values():
        slot.retire_all()
    # The supervisor answers whatever the stopped, dead or hung incarnations still held.
    supervisor.ask(FinishShutdown(), block=True)
    # The background health probes end.
    health.close()
    # Last, the supervisor itself.
    _stop_actors([supervisor], timeout=5.0)


def stop_serving(slots: dict[str, ToolSlot], answer: AnswerCall) -> ActorRefs:
    """On the supervisor's thread: stop every slot, answer its stash; returns the actors to drain."""
    refs = []
    for slot in slots.values():
        refs.extend(slot.stop())
        for call in slot.take_stash():
            answer(call, call.failure(ErrorType.CANCELLED, "the runtime is stopping"))
    return refs


def answer_what_is_left(slots: dict[str, ToolSlot], answer: AnswerCall) -> None:
    """On the supervisor's thread, once every actor stopped: answer, and kill, what they still held."""
    for slot in slots.values():
        for call in slot.take_pending():
            if call.run is not None:
                call.run.cancel()
            answer(call, call.failure(ErrorType.CANCELLED, "the runtime stopped before the call finished"))


def _drain(refs: ActorRefs, deadline: float) -> None:
    drains: list[ThreadReply[None]] = []
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
            return


def _stop_actors(refs: ActorRefs, *, timeout: float) -> None:
    for ref in refs:
        # A hung actor is abandoned: its daemon thread cannot hold the process.
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            ref.stop(block=True, timeout=timeout)
