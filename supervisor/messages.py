"""What may be sent to the supervisor actor, besides the tool actors' events (`actors.events`).

Small frozen values, safe to send from any thread. The queries (`QUERIES`) are asked and answered;
an exception handling one goes back to the asker, while a bad event is logged and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.tools.base import ToolSpec
    from supervisor.config import Settings
    from supervisor.tool_changes import ToolChange


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
class ChangeTools:
    """Apply a reload's or an operator's tool changes, in order, as one message; `settings` is now in force."""

    changes: tuple[ToolChange, ...]
    settings: Settings | None = None  # None: an operator's switch, the config is unchanged
    specs: Mapping[str, ToolSpec] | None = None  # the tools that serve now (their binaries are probed)


@dataclass(frozen=True)
class Retired:
    """A retired incarnation has finished every call it held."""

    tool: str
    incarnation: int


@dataclass(frozen=True)
class RetireOver:
    """A retired incarnation's drain time is over: cancel and answer what it still runs."""

    tool: str
    incarnation: int
    drain_sec: float


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


QUERIES = (GetStatus, GetMetrics, Control, ChangeTools, BeginShutdown, FinishShutdown)
