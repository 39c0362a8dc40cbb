"""Prometheus metrics for one runtime, fed only by the supervisor's event stream.

Each runtime owns its registry (never the process-global one), so two
embedded runtimes, or a test's runtime beside the daemon's, never mix their
numbers. Labels come from bounded sets only — tool names, outcomes, breaker
states, restart reasons — never a target or an argument. The duration
histogram's buckets span 10 ms to an hour because a scan can be either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from actors.breaker import BreakerState
from actors.results import ErrorType

OUTCOMES = ("ok", *(e.value for e in ErrorType))
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RESTART_REASONS = ("crash", "hang", "operator")
RESERVOIR = 1024  # recent durations kept per tool for p50/p95


class Metrics:
    def __init__(self, tools: Iterable[str], version: str) -> None:
        tools = list(tools)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter("labrecon_tool_calls", "Tool calls answered, by outcome.", ["tool", "outcome"], registry=r)
        self.duration = Histogram(
            "labrecon_tool_call_duration_seconds",
            "Time from admission to answer of calls that ran a process.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("labrecon_tool_in_flight", "Calls running now.", ["tool"], registry=r)
        self.queue_depth = Gauge("labrecon_tool_queue_depth", "Calls admitted and waiting for a slot.", ["tool"], registry=r)
        self.breaker = Gauge("labrecon_breaker_state", "1 for the breaker's current state.", ["tool", "state"], registry=r)
        self.restarts = Counter("labrecon_actor_restarts", "Tool actor restarts, by reason.", ["tool", "reason"], registry=r)
        self.restart_seconds = Histogram(
            "labrecon_actor_restart_seconds",
            "From a tool actor's death being seen to its successor reading its mailbox.",
            ["tool"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tool_up = Gauge("labrecon_tool_up", "1 when the tool's actor is serving, 0 when restarting or failed.", ["tool"], registry=r)
        Info("labrecon_build", "labrecon build information.", registry=r).info({"version": version})
        self._recent: dict[str, deque[float]] = {}
        self._restarts: dict[str, deque[float]] = {}
        # Children looked up once: every call touches these, and labels() takes a lock each time.
        self._call_counters = {tool: {o: self.calls.labels(tool, o) for o in OUTCOMES} for tool in tools}
        self._durations = {tool: self.duration.labels(tool) for tool in tools}
        self._load_gauges = {tool: (self.in_flight.labels(tool), self.queue_depth.labels(tool)) for tool in tools}
        for tool in tools:
            self._recent[tool] = deque(maxlen=RESERVOIR)
            self._restarts[tool] = deque(maxlen=RESERVOIR)
            for outcome in OUTCOMES:
                self.calls.labels(tool, outcome)
            for reason in RESTART_REASONS:
                self.restarts.labels(tool, reason)
            self.in_flight.labels(tool).set(0)
            self.queue_depth.labels(tool).set(0)
            self.tool_up.labels(tool).set(1)
            self.set_breaker(tool, BreakerState.CLOSED.value)

    def call_finished(self, tool: str, outcome: str, duration_sec: float, ran: bool) -> None:
        self._call_counters[tool][outcome].inc()
        if ran:
            self._durations[tool].observe(duration_sec)
            self._recent[tool].append(duration_sec)

    def set_load(self, tool: str, *, in_flight: int, queued: int) -> None:
        in_flight_gauge, queued_gauge = self._load_gauges[tool]
        in_flight_gauge.set(in_flight)
        queued_gauge.set(queued)

    def set_breaker(self, tool: str, state: str) -> None:
        for s in BreakerState:
            self.breaker.labels(tool, s.value).set(1 if s.value == state else 0)

    def restart_finished(self, tool: str, seconds: float) -> None:
        self.restart_seconds.labels(tool).observe(seconds)
        self._restarts[tool].append(seconds)

    def percentiles(self, tool: str) -> tuple[float | None, float | None]:
        values = sorted(self._recent.get(tool, ()))
        if not values:
            return None, None
        return _nearest_rank(values, 0.50), _nearest_rank(values, 0.95)

    def restart_percentile(self, tool: str, q: float) -> float | None:
        values = sorted(self._restarts.get(tool, ()))
        return _nearest_rank(values, q) if values else None

    def text(self) -> bytes:
        return generate_latest(self.registry)


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    index = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]
