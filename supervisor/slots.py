"""A tool's routing slot: which incarnation serves it, and every call in its hands.

Callers route straight to the current tool actor through the slot, so the slot is what both sides
touch, under its own lock. Every call handed to an incarnation stays in `pending`, marked with that
incarnation, until answered: when the incarnation crashes or hangs, what it held is answered or
stashed for the next one. A reload or an operator may retire the serving incarnation while it still
runs calls (`retiring`): it finishes them while new calls go to its successor, or nowhere when the
tool is disabled.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pykka

from actors.breaker import CircuitBreaker
from actors.reply import ThreadReply
from actors.results import CallOutcome, ErrorType
from actors.settings import ToolSettings
from actors.tool import Call, Submit
from actors.tools.base import ToolSpec
from supervisor.config import PoolSettings, Settings
from supervisor.pools import pool_settings, slot_name
from supervisor.restarts import RestartPolicy, RestartType

SlotState = Literal["running", "restarting", "failed", "disabled", "stopped"]
Why = Literal["replaced", "disabled"]  # why an incarnation was retired

AnswerCall = Callable[[Call, CallOutcome], None]
"""Answer a call the slot held, and count it, unless somebody answered it already."""


@dataclass
class Swept:
    """What a dead incarnation left behind, sorted by what must happen to each call."""

    running: list[Call] = field(default_factory=list)  # started: answer actor_restarted
    requeued: list[Call] = field(default_factory=list)  # never started: serve on the next incarnation
    cancelled: list[Call] = field(default_factory=list)  # cancel was asked for: answer cancelled


@dataclass
class Refusal:
    state: SlotState
    reason: str | None


@dataclass
class Retiring:
    """An incarnation taken out of service that still finishes the calls it holds."""

    incarnation: int
    ref: pykka.ActorRef[Any]
    retired: threading.Event
    why: Why
    timer: threading.Timer | None = None  # its drain deadline


class ToolSlot:
    def __init__(
        self,
        name: str,
        spec: ToolSpec,
        settings: ToolSettings,
        policy: RestartPolicy,
        breaker: CircuitBreaker,
        pool: PoolSettings | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.pool = pool  # the scanner pool its runs go to; None: this machine
        self.settings = settings
        self.policy = policy
        self.breaker = breaker  # outlives incarnations: a restart must not close an open circuit
        self.lock = threading.RLock()
        self.state: SlotState = "restarting"
        self.ref: pykka.ActorRef[Any] | None = None
        self.incarnation = 0
        self.retired = threading.Event()
        self.pending: dict[str, Call] = {}
        self.stash: deque[Call] = deque()
        self.reason: str | None = None  # why the slot is failed or disabled
        self.disabled_since: float | None = None  # wall-clock time, while disabled
        self.retiring: dict[int, Retiring] = {}
        self.restart_requested = False  # the next death is an operator's restart, not a crash
        self.ping: ThreadReply[float] | None = None  # the last ping sent to the serving incarnation
        self.ping_sent_at = 0.0

    def route(self, call: Call, stash_limit: int) -> Refusal | None:
        """Hand `call` to the current incarnation or the stash; a Refusal says why neither."""
        with self.lock:
            if self.state == "running":
                self._watch(call)
                self._hand_over(call)
                return None
            if self.state == "restarting" and len(self.stash) < stash_limit:
                self._watch(call)
                self.stash.append(call)
                return None
            return Refusal(self.state, self.reason)

    def reroute(self, call: Call) -> bool:
        """Hand a call a retired incarnation never started to whoever serves now; False if nobody does."""
        with self.lock:
            if self.state == "running":
                self._hand_over(call)
                return True
            if self.state == "restarting":
                self.pending.pop(call.call_id, None)
                self.stash.append(call)
                return True
            self.pending.pop(call.call_id, None)
            return False

    def _watch(self, call: Call) -> None:
        """Once a call is answered, it is no longer pending with any incarnation."""
        call_id = call.call_id

        def forget(_outcome: CallOutcome) -> None:
            self._forget(call_id)

        call.reply.on_resolved(forget)

    def _hand_over(self, call: Call) -> None:
        call.incarnation = self.incarnation
        self.pending[call.call_id] = call
        try:
            assert self.ref is not None
            self.ref.tell(Submit(call))
        except pykka.ActorDeadError:
            pass  # it stays pending; the crash sweep moves it to the next incarnation

    def _forget(self, call_id: str) -> None:
        with self.lock:
            self.pending.pop(call_id, None)

    def install(self, ref: pykka.ActorRef[Any], incarnation: int, retired: threading.Event) -> bool:
        """A new incarnation serves from now on, the stash first, in order; False if the slot stopped."""
        with self.lock:
            if self.state == "stopped":
                return False
            self.ref, self.incarnation, self.retired = ref, incarnation, retired
            self.state = "running"
            self.reason = None
            self.ping = None
            waiting, self.stash = list(self.stash), deque()
            for call in waiting:
                self._hand_over(call)
            return True

    def sweep(self, incarnation: int) -> Swept | None:
        """Retire incarnation `incarnation` and sort out everything it held.

        None when there is nothing to do: that incarnation was already
        replaced, or the slot is not serving (failed, or stopping — shutdown
        answers what a stopping slot holds).
        """
        swept = Swept()
        with self.lock:
            if incarnation != self.incarnation or self.state != "running":
                return None
            self.retired.set()
            self.state = "restarting"
            for call in self._take_held(incarnation):
                if call.reply.done:
                    continue
                if call.cancel_requested:
                    swept.cancelled.append(call)
                elif call.started:
                    swept.running.append(call)
                else:
                    swept.requeued.append(call)
            # Calls that were already admitted go ahead of those that arrived during the restart.
            self.stash.extendleft(reversed(swept.requeued))
        return swept

    def _take_held(self, incarnation: int) -> list[Call]:
        """Take the calls `incarnation` holds out of `pending`."""
        held = [call for call in self.pending.values() if call.incarnation == incarnation]
        for call in held:
            del self.pending[call.call_id]
        return held

    # --- taking an incarnation out of service ---------------------------------------

    def retire(self, why: Why) -> Retiring | None:
        """Take the serving incarnation out of service; it keeps what it holds and gets nothing new.

        The slot is left `restarting` (new calls wait in the stash) until a successor is installed or
        the slot is disabled. None when no incarnation serves.
        """
        with self.lock:
            if self.state != "running" or self.ref is None:
                return None
            retiring = Retiring(self.incarnation, self.ref, self.retired, why)
            self.retiring[self.incarnation] = retiring
            self.state = "restarting"
            self.ref, self.retired = None, threading.Event()
            self.restart_requested = False  # an operator's restart of it is moot: it is retired
            return retiring

    def take_over(self, ref: pykka.ActorRef[Any], incarnation: int, retired: threading.Event) -> Retiring | None:
        """A successor serves from now on, in the same step that retires the serving incarnation; None (and
        nothing changed) unless one serves."""
        with self.lock:
            retiring = self.retire("replaced")
            if retiring is not None:
                self.install(ref, incarnation, retired)
            return retiring

    def take_retiring(self, incarnation: int) -> tuple[Retiring, list[Call]] | None:
        """Forget a retired incarnation; returns it with the unanswered calls it still held."""
        with self.lock:
            retiring = self.retiring.pop(incarnation, None)
            if retiring is None:
                return None
            held = [call for call in self._take_held(incarnation) if not call.reply.done]
            return retiring, held

    def disable(self, reason: str, since: float) -> list[Call]:
        """Out of service until enabled: route refuses with `reason`; returns the stash to answer."""
        with self.lock:
            self.state = "disabled"
            self.reason = reason
            self.disabled_since = since
            taken, self.stash = list(self.stash), deque()
            return taken

    def enable(self) -> bool:
        """Back in service: the next incarnation may start; False if the slot was not disabled."""
        with self.lock:
            if self.state != "disabled":
                return False
            self.state = "restarting"
            self.reason = None
            self.disabled_since = None
            return True

    def configure(self, settings: ToolSettings) -> None:
        """New settings from a reload: the next incarnation starts with them, the restart type applies now."""
        with self.lock:
            self.settings = settings
            self.policy.restart_type = RestartType(settings.restart)

    def stop(self) -> list[pykka.ActorRef[Any]]:
        """Serve no more; returns the incarnations to drain: the serving one and those retiring."""
        with self.lock:
            refs = [retiring.ref for retiring in self.retiring.values()]
            if self.state == "running" and self.ref is not None:
                refs.append(self.ref)
            self.state = "stopped"
            return refs

    def retire_all(self) -> None:
        """Every incarnation, retiring ones included, stops touching its calls."""
        with self.lock:
            self.retired.set()
            for retiring in self.retiring.values():
                retiring.retired.set()
                if retiring.timer is not None:
                    retiring.timer.cancel()

    def take_pending(self) -> list[Call]:
        with self.lock:
            taken, self.pending = list(self.pending.values()), {}
            return taken

    def take_stash(self) -> list[Call]:
        with self.lock:
            taken, self.stash = list(self.stash), deque()
            return taken

    def cancel(self, call_id: str) -> tuple[Call | None, pykka.ActorRef[Any] | None]:
        """Cancel a call the slot holds.

        Returns (call, None) if it was stashed, and so is the caller's to
        answer; (None, ref) if an incarnation holds it and must be told;
        (None, None) if the slot does not hold it.
        """
        with self.lock:
            for stashed in self.stash:
                if stashed.call_id == call_id:
                    self.stash.remove(stashed)
                    return stashed, None
            pending = self.pending.get(call_id)
            if pending is None:
                return None, None
            pending.cancel_requested = True  # if the incarnation dies first, the sweep answers it
            retiring = self.retiring.get(pending.incarnation)
            return None, retiring.ref if retiring is not None else self.ref

    def set_state(self, state: SlotState, reason: str | None = None) -> None:
        with self.lock:
            self.state = state
            self.reason = reason


def build_slots(
    settings: Settings, specs: Mapping[str, ToolSpec], clock: Callable[[], float]
) -> dict[str, ToolSlot]:
    """One slot per tool, or per tool and pool, each with its restart policy and the breaker its incarnations share."""
    sup = settings.supervisor
    slots = {}
    pools: tuple[PoolSettings | None, ...] = settings.cluster.pools or (None,)
    for (tool, spec), pool in itertools.product(specs.items(), pools):
        name = slot_name(tool, None if pool is None else pool.name)
        tool_settings = pool_settings(tool, getattr(settings.tools, tool), pool)
        policy = RestartPolicy(
            restart_type=RestartType(tool_settings.restart),
            max_restarts=sup.max_restarts,
            window_sec=sup.restart_window_sec,
            backoff_initial_sec=sup.backoff_initial_sec,
            backoff_max_sec=sup.backoff_max_sec,
            backoff_reset_sec=sup.backoff_reset_sec,
        )
        breaker = CircuitBreaker(tool_settings.breaker, clock=clock)
        slot = slots[name] = ToolSlot(name, spec, tool_settings, policy, breaker, pool)
        if not tool_settings.enabled:
            slot.disable(disabled_in_config(tool), time.time())
    return slots


def slots_of(slots: Mapping[str, ToolSlot], tool: str) -> list[ToolSlot]:
    """The slots serving `tool`: its own, or one per pool."""
    return [slot for slot in slots.values() if slot.spec.name == tool]


def refusal_outcome(call: Call, state: SlotState, reason: str | None) -> CallOutcome:
    """The answer to a call a slot in `state` does not take."""
    tool = call.prepared.tool
    if state == "failed":
        return call.failure(ErrorType.TOOL_FAILED, failed_message(tool, reason or "restart limit"))
    if state == "disabled":
        return call.failure(ErrorType.TOOL_DISABLED, reason or f"{tool} is disabled")
    if state == "stopped":
        return call.failure(ErrorType.CANCELLED, "the runtime is stopping")
    message = f"{tool} is restarting and its waiting room is full"
    return call.failure(ErrorType.RESOURCE_EXHAUSTED, message, retry_after_sec=1.0)


def disabled_in_config(tool: str) -> str:
    return f"{tool} is disabled in the configuration (tools.{tool}.enabled = false)"


def failed_message(tool: str, reason: str) -> str:
    """What a call to a tool the supervisor gave up on is told."""
    return f"{tool} is disabled ({reason}); an operator can reset it"
