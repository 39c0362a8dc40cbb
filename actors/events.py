"""What a tool actor tells its parent about its life.

Tool actors never keep counters of their own for the outside world: they
report every change as an event, and whoever supervises them (the
supervisor actor in a runtime, a list in a test) derives metrics, health and
status from that one stream. Events are small frozen values so they can cross
threads freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Parent(Protocol):
    """Anything an actor can report to: a pykka ActorRef, or a test's recorder."""

    def tell(self, message: Any) -> None: ...


@dataclass(frozen=True)
class ActorStarted:
    """A new incarnation is up and reading its mailbox."""

    tool: str
    incarnation: int
    at: float  # the actor's monotonic clock


@dataclass(frozen=True)
class CallQueued:
    """A call was admitted to wait for a slot (a call that starts at once is only reported started)."""

    tool: str
    call_id: str


@dataclass(frozen=True)
class CallStarted:
    tool: str
    call_id: str


@dataclass(frozen=True)
class CallFinished:
    """`outcome` is "ok" or an ErrorType value; `ran` says whether a process was started."""

    tool: str
    call_id: str
    outcome: str
    duration_sec: float
    ran: bool


@dataclass(frozen=True)
class BreakerChanged:
    tool: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class ActorCrashed:
    """The actor died (or was made to, for an operator restart); its calls are not answered yet."""

    tool: str
    incarnation: int
    reason: str
