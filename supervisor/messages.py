"""What may be sent to the supervisor actor, besides the tool actors' events (`actors.events`).

Small frozen values, safe to send from any thread. The queries (`QUERIES`) are asked and answered;
an exception handling one goes back to the asker, while a bad event is logged and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    """Time to ping the tool actors and look for hangs."""


@dataclass(frozen=True)
class StartChild:
    """A restart's backoff is over: start the incarnation after `after_incarnation`, if still wanted."""

    tool: str
    after_incarnation: int


@dataclass(frozen=True)
class Refused:
    """A call answered before reaching any actor (validation, a failed tool, a full stash)."""

    tool: str
    outcome: str


@dataclass(frozen=True)
class Retried:
    """An attempt at a call failed for a transient reason (`supervisor.retries`); the call tries again."""

    tool: str
    reason: str


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


QUERIES = (GetStatus, GetMetrics, Control, BeginShutdown, FinishShutdown)
