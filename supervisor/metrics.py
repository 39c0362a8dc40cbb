"""Prometheus metrics for one runtime: a projection of the call ledger, updated as it changes, and
collectors that read numbers with another owner (the scan store's, the config's, the cluster's) when scraped.

Each runtime owns its registry (never the process-global one), so two
embedded runtimes, or a test's runtime beside the daemon's, never mix their
numbers. Labels come from bounded sets only — tool names, pool names from the
config, outcomes, breaker states, restart and retry reasons — never a target or
an argument. The duration histogram's buckets span 10 ms to an hour because a
scan can be either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.breaker import BreakerState
from actors.results import ErrorType
from supervisor.pools import NO_POOL, metric_labels
from supervisor.retries import RetryReason
from supervisor.status import ClusterStatus, ConfigStatus, ScanStoreStatus

T = TypeVar("T")

OUTCOMES = ("ok", *(e.value for e in ErrorType))
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RESTART_REASONS = ("crash", "hang", "operator")


class Metrics:
    """The ledger's observer (`supervisor.ledger.LedgerObserver`): it counts nothing of its own.

    The ledger keeps numbers per name: a tool ("nmap"), or a tool on a pool ("nmap@dmz"). Each is
    served with a `tool` label (the tool's own name) and a `pool` label (`supervisor.pools.metric_labels`).
    """

    def __init__(self, tools: Iterable[str], version: str, collectors: Iterable[Collector] = ()) -> None:
        self._labels = metric_labels(tools)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "labrecon_tool_calls",
            "Tool calls answered, by outcome; a retried call counts each attempt's answer.",
            ["tool", "pool", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "labrecon_call_retries",
            "Calls tried again after a transient failure, by reason.",
            ["tool", "pool", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "labrecon_tool_call_duration_seconds",
            "Time from admission to answer of calls that ran a process.",
            ["tool", "pool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("labrecon_tool_in_flight", "Calls running now.", ["tool", "pool"], registry=r)
        self.queue_depth = Gauge(
            "labrecon_tool_queue_depth", "Calls admitted and waiting for a slot.", ["tool", "pool"], registry=r
        )
        self.breaker = Gauge(
            "labrecon_breaker_state", "1 for the breaker's current state.", ["tool", "pool", "state"], registry=r
        )
        self.restarts = Counter(
            "labrecon_actor_restarts", "Tool actor restarts, by reason.", ["tool", "pool", "reason"], registry=r
        )
        self.restart_seconds = Histogram(
            "labrecon_actor_restart_seconds",
            "From a tool actor's death being seen to its successor reading its mailbox.",
            ["tool", "pool"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tool_up = Gauge(
            "labrecon_tool_up",
            "1 when the tool's actor is serving, 0 when restarting or failed.",
            ["tool", "pool"],
            registry=r,
        )
        Info("labrecon_build", "labrecon build information.", registry=r).info({"version": version})
        for collector in collectors:  # numbers others own, read when scraped
            r.register(collector)
        # Children looked up once: every call touches these, and labels() takes a lock each time.
        labels = self._labels
        self._call_counters = {
            name: {o: self.calls.labels(*labels[name], o) for o in OUTCOMES} for name in labels
        }
        self._durations = {name: self.duration.labels(*labels[name]) for name in labels}
        self._load_gauges = {
            name: (self.in_flight.labels(*labels[name]), self.queue_depth.labels(*labels[name])) for name in labels
        }
        for name, (tool, pool) in labels.items():
            for reason in RESTART_REASONS:
                self.restarts.labels(tool, pool, reason)
            for retry_reason in RetryReason:
                self.retries.labels(tool, pool, retry_reason.value)
            self.in_flight.labels(tool, pool).set(0)
            self.queue_depth.labels(tool, pool).set(0)
            if pool != NO_POOL:  # a tool's calls refused before a pool was chosen: no actor, no breaker
                self.tool_up.labels(tool, pool).set(1)
                self.breaker_changed(name, BreakerState.CLOSED.value)

    def call_counted(self, tool: str, outcome: str, duration_sec: float, ran: bool) -> None:
        self._call_counters[tool][outcome].inc()
        if ran:
            self._durations[tool].observe(duration_sec)

    def load_changed(self, tool: str, *, in_flight: int, queued: int) -> None:
        in_flight_gauge, queued_gauge = self._load_gauges[tool]
        in_flight_gauge.set(in_flight)
        queued_gauge.set(queued)

    def breaker_changed(self, tool: str, state: str) -> None:
        for s in BreakerState:
            self.breaker.labels(*self._labels[tool], s.value).set(1 if s.value == state else 0)

    def serving_changed(self, tool: str, serving: bool) -> None:
        self.tool_up.labels(*self._labels[tool]).set(1 if serving else 0)

    def restart_counted(self, tool: str, reason: str) -> None:
        self.restarts.labels(*self._labels[tool], reason).inc()

    def restart_timed(self, tool: str, seconds: float) -> None:
        self.restart_seconds.labels(*self._labels[tool]).observe(seconds)

    def retry_counted(self, tool: str, reason: str) -> None:
        self.retries.labels(*self._labels[tool], reason).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)



class ReadAtScrape(Collector, Generic[T]):
    """Numbers another part owns, read from it at scrape time and never copied: `families(None)` says
    what is served (for `describe`), `families(value)` serves what `read()` gives now."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._read())

    def _families(self, value: T | None) -> Iterator[Metric]:
        raise NotImplementedError


class ScanStoreCollector(ReadAtScrape[ScanStoreStatus]):
    """The scan store's numbers: the store owns the counts and its size, the runtime's `Scans` the expired total."""

    def _families(self, stats: ScanStoreStatus | None) -> Iterator[Metric]:
        scans = GaugeMetricFamily("labrecon_scans", "Scans in the store, by status.", labels=["status"])
        size = GaugeMetricFamily("labrecon_scan_store_bytes", "The scan store's size on disk, its log included.")
        expired = CounterMetricFamily(
            "labrecon_scans_expired", "Finished scans removed from the store by age or count."
        )
        if stats is not None:
            for status, count in stats.counts.items():
                scans.add_metric([status], count)
            size.add_metric([], stats.size_bytes)
            expired.add_metric([], stats.expired_total)
        yield from (scans, size, expired)


class ConfigCollector(ReadAtScrape[ConfigStatus]):
    """Reloads, from the runtime's `ConfigStatus`, which owns them."""

    def _families(self, config: ConfigStatus | None) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "labrecon_config_reloads", "Reloads since start: applied, or refused (the config did not validate).",
            labels=["result"],
        )
        loaded = GaugeMetricFamily(
            "labrecon_config_loaded_timestamp_seconds", "When the config in force came into force (Unix time)."
        )
        if config is not None:
            reloads.add_metric(["applied"], config.reloads)
            reloads.add_metric(["refused"], config.refused)
            loaded.add_metric([], config.loaded_at)
        yield from (reloads, loaded)


class PoolNodesCollector(ReadAtScrape[ClusterStatus]):
    """Live nodes per scanner pool, from the cluster's watcher, which owns what is known of the nodes."""

    def _families(self, cluster: ClusterStatus | None) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "labrecon_pool_nodes", "Live Ray nodes advertising each scanner pool's resource.", labels=["pool"]
        )
        if cluster is not None:
            for pool in cluster.pools:
                nodes.add_metric([pool.name], sum(node.alive for node in pool.nodes))
        yield nodes
