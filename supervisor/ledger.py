"""The call ledger: every number the runtime reports about its tools, kept in one place.

It is fed one event at a time (calls queued, started, finished, refused or retried, breaker changes,
deaths and restarts) and answers the status snapshot's questions. Pure: no threads, no I/O, the clock injected.
The Prometheus metrics are a projection of it, told of each change through a `LedgerObserver`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

RESERVOIR = 1024  # recent durations kept per tool for the percentiles

CallState = Literal["queued", "running"]


class LedgerObserver(Protocol):
    """Whatever mirrors the ledger elsewhere (the Prometheus metrics)."""

    def call_counted(self, tool: str, outcome: str, duration_sec: float, ran: bool) -> None: ...

    def load_changed(self, tool: str, *, in_flight: int, queued: int) -> None: ...

    def breaker_changed(self, tool: str, state: str) -> None: ...

    def serving_changed(self, tool: str, serving: bool) -> None: ...

    def restart_counted(self, tool: str, reason: str) -> None: ...

    def restart_timed(self, tool: str, seconds: float) -> None: ...

    def retry_counted(self, tool: str, reason: str) -> None: ...


@dataclass(frozen=True)
class ToolNumbers:
    """A tool's numbers as the status snapshot shows them."""

    in_flight: int
    queued: int
    calls: dict[str, int]
    p50_sec: float | None
    p95_sec: float | None
    restarts: int
    last_restart_reason: str | None
    restart_p50_sec: float | None
    restart_p99_sec: float | None
    retries: dict[str, int]  # calls tried again, by reason


@dataclass
class _ToolTallies:
    running: int = 0
    queued: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=RESERVOIR))
    restarts: int = 0
    last_restart_reason: str | None = None
    restart_durations: deque[float] = field(default_factory=lambda: deque(maxlen=RESERVOIR))
    died_at: float | None = None  # when the last death was seen, until a successor serves
    retries: dict[str, int] = field(default_factory=dict)


class CallLedger:
    def __init__(
        self,
        tools: Iterable[str],
        *,
        clock: Callable[[], float],
        observer: LedgerObserver | None = None,
    ) -> None:
        self.clock = clock
        self.observer = observer
        self.started_at = clock()
        self._tools = {name: _ToolTallies() for name in tools}
        self._calls: dict[str, tuple[str, CallState]] = {}  # call_id -> (tool, state), calls in an actor's hands

    # --- calls ----------------------------------------------------------------------

    def call_queued(self, tool: str, call_id: str) -> None:
        self._move(call_id, tool, "queued")

    def call_started(self, tool: str, call_id: str) -> None:
        self._move(call_id, tool, "running")

    def call_finished(self, tool: str, call_id: str, outcome: str, duration_sec: float, ran: bool) -> None:
        """An actor answered a call; `ran` says whether a process was started."""
        self._forget(call_id)
        self._count(tool, outcome, duration_sec, ran)

    def call_refused(self, tool: str, outcome: str) -> None:
        """A call answered before it reached any actor."""
        self._count(tool, outcome, 0.0, False)

    def call_answered(
        self, tool: str, outcome: str, admitted_at: float, ran: bool, call_id: str | None = None
    ) -> None:
        """The supervisor answered a call an actor held (a death, a stash, a drain cut short, a shutdown): timed
        from admission; no longer in flight."""
        if call_id is not None:
            self._forget(call_id)
        self._count(tool, outcome, self.clock() - admitted_at, ran)

    def call_retried(self, tool: str, reason: str) -> None:
        """An attempt failed for a transient reason and the call is tried again; each attempt's answer counts too."""
        tallies = self._tools[tool]
        tallies.retries[reason] = tallies.retries.get(reason, 0) + 1
        if self.observer is not None:
            self.observer.retry_counted(tool, reason)

    # --- tools ----------------------------------------------------------------------

    def breaker_changed(self, tool: str, state: str) -> None:
        """The breaker itself lives with the tool; only its observers (the metrics) keep its state."""
        if self.observer is not None:
            self.observer.breaker_changed(tool, state)

    def child_installed(self, tool: str) -> None:
        """A new incarnation serves the tool's calls."""
        if self.observer is not None:
            self.observer.serving_changed(tool, True)

    def serving_changed(self, tool: str, serving: bool) -> None:
        """The tool was taken out of service, or brought back, by an operator or a reload."""
        if self.observer is not None:
            self.observer.serving_changed(tool, serving)

    def child_died(self, tool: str, reason: str, detail: str, held: Iterable[str] | None = None) -> None:
        """The serving incarnation died (`reason`: crash, hang or operator); what it `held` (by default every
        call of the tool) is no longer in flight; a retired incarnation's calls stay."""
        tallies = self._tools[tool]
        tallies.died_at = self.clock()
        gone = [c for c, (owner, _) in self._calls.items() if owner == tool] if held is None else list(held)
        for call_id in gone:
            self._forget(call_id)  # queued ones come back as queued from the next incarnation
        tallies.restarts += 1
        tallies.last_restart_reason = f"{reason}: {detail}"
        if self.observer is not None:
            self.observer.restart_counted(tool, reason)
            self.observer.serving_changed(tool, False)

    def child_reading(self, tool: str, at: float) -> None:
        """The successor of a dead incarnation reads its mailbox at `at`: the restart is over."""
        tallies = self._tools[tool]
        if tallies.died_at is None:
            return
        seconds = max(0.0, at - tallies.died_at)
        tallies.died_at = None
        tallies.restart_durations.append(seconds)
        if self.observer is not None:
            self.observer.restart_timed(tool, seconds)

    # --- reading --------------------------------------------------------------------

    def numbers(self, tool: str) -> ToolNumbers:
        tallies = self._tools[tool]
        durations = sorted(tallies.durations)
        restarts = sorted(tallies.restart_durations)
        return ToolNumbers(
            in_flight=tallies.running,
            queued=tallies.queued,
            calls=dict(tallies.outcomes),
            p50_sec=nearest_rank(durations, 0.50),
            p95_sec=nearest_rank(durations, 0.95),
            restarts=tallies.restarts,
            last_restart_reason=tallies.last_restart_reason,
            restart_p50_sec=nearest_rank(restarts, 0.50),
            restart_p99_sec=nearest_rank(restarts, 0.99),
            retries=dict(tallies.retries),
        )

    def uptime_sec(self) -> float:
        return self.clock() - self.started_at

    # --- inside ---------------------------------------------------------------------

    def _move(self, call_id: str, tool: str, state: CallState) -> None:
        previous = self._calls.get(call_id)
        if previous is not None:
            self._add(*previous, -1)
        self._calls[call_id] = (tool, state)
        self._add(tool, state, +1)
        if previous is not None and previous[0] != tool:
            self._load_changed(previous[0])
        self._load_changed(tool)

    def _forget(self, call_id: str) -> None:
        previous = self._calls.pop(call_id, None)
        if previous is not None:
            self._add(*previous, -1)
            self._load_changed(previous[0])

    def _add(self, tool: str, state: CallState, delta: int) -> None:
        tallies = self._tools[tool]
        if state == "running":
            tallies.running += delta
        else:
            tallies.queued += delta

    def _load_changed(self, tool: str) -> None:
        if self.observer is not None:
            tallies = self._tools[tool]
            self.observer.load_changed(tool, in_flight=tallies.running, queued=tallies.queued)

    def _count(self, tool: str, outcome: str, duration_sec: float, ran: bool) -> None:
        tallies = self._tools[tool]
        tallies.outcomes[outcome] = tallies.outcomes.get(outcome, 0) + 1
        if ran:
            tallies.durations.append(duration_sec)
        if self.observer is not None:
            self.observer.call_counted(tool, outcome, duration_sec, ran)


def nearest_rank(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank `q` quantile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]
