"""Health verdicts: is labrecon alive, is it ready, and if not, which check says why.

`live` answers "should this process be restarted?" — true whenever the
supervisor answers at all. `ready` answers "should traffic come here?" —
true while at least one tool serves (with scanner pools: on a pool with a live
node) and the system is not out of memory or disk. Everything else (a tool
failed, a breaker open, a binary missing, CPU high, a tool's installation with
a problem its spec names, a scanner pool without a live node) makes the runtime
`degraded`: still worth talking to, but an operator should look. Binary
versions are probed once, in the background, so start-up never waits on three
subprocesses; installation problems come from the settings, logged once at start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import psutil

from actors.probe import probe_binary
from actors.runner import ProcessRun
from actors.tools.base import ToolSpec
from supervisor.config import HealthSettings, Settings
from supervisor.status import CheckResult, ClusterStatus, HealthStatus, ToolStatus

logger = logging.getLogger(__name__)


class BinaryProbe:
    """Finds each tool's binary and asks its version, once, off the caller's thread; `close()` ends it."""

    def __init__(self, binaries: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        self.queries = binaries
        self.results: dict[str, dict[str, Any]] = {
            name: {"binary": binary, "found": False, "path": None, "version": None, "probed": False}
            for name, (binary, _) in binaries.items()
        }
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._current: ProcessRun | None = None
        self._thread = threading.Thread(target=self._probe_all, name="labrecon-binary-probe", daemon=True)
        self._thread.start()

    def _probe_all(self) -> None:
        for name, (binary, version_argv) in self.queries.items():
            if self._closed.is_set():
                return
            self.results[name] = probe_binary(binary, version_argv, started=self._track)

    def _track(self, run: ProcessRun) -> bool:
        with self._lock:
            self._current = run
            return not self._closed.is_set()

    def close(self) -> None:
        """Stop probing: a version query still running is killed, and waited for."""
        self._closed.set()
        with self._lock:
            if self._current is not None:
                self._current.cancel()
        self._thread.join(10.0)


def version_queries(settings: Settings, specs: Mapping[str, ToolSpec]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """For each tool: its configured binary, and what its spec runs after it to learn the version."""
    tools = dict(settings.tools.items())
    return {name: (tools[name].binary, spec.version_argv) for name, spec in specs.items()}


def installation_problems(settings: Settings, specs: Mapping[str, ToolSpec]) -> dict[str, tuple[str, ...]]:
    """For each tool: what its spec finds wrong with its installation, as its settings found it."""
    tools = dict(settings.tools.items())
    return {name: spec.installation_problems(tools[name]) for name, spec in specs.items()}


def pool_checks(cluster: ClusterStatus) -> list[CheckResult]:
    """One check per scanner pool: failing (not critical) while no node of it is alive, as its calls are
    refused, or while a node's runner found no version of its tool (pure)."""
    checks = []
    for pool in cluster.pools:
        nodes = sum(node.alive for node in pool.nodes)
        # A runner that found no version of its tool: the binary is missing on that node, or broken.
        silent = sorted(
            {tool for node in pool.nodes if node.alive for tool, version in node.tools.items() if not version}
        )
        if not pool.live:
            detail = f"pool {pool.name} has no live node (none advertising {pool.resource}); its calls get node_lost"
        else:
            detail = f"{nodes} live node{'' if nodes == 1 else 's'}"
            if silent:
                detail += f"; no version from {', '.join(silent)} on a node (binary missing?)"
        data = {"live": pool.live, "nodes": nodes, "resource": pool.resource, "no_version": silent}
        ok = pool.live and not silent
        checks.append(CheckResult(name=f"pool:{pool.name}", ok=ok, critical=False, detail=detail, data=data))
    return checks


def verdict(checks: list[CheckResult]) -> HealthStatus:
    """Ready while every critical check passes; healthy only while every check does (pure)."""
    ready = all(c.ok for c in checks if c.critical)
    if all(c.ok for c in checks):
        return HealthStatus(live=True, ready=ready, status="healthy", checks=checks)
    return HealthStatus(live=True, ready=ready, status="degraded" if ready else "unhealthy", checks=checks)


def _local_queries(settings: Settings, specs: Mapping[str, ToolSpec]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The binaries this machine runs: none with scanner pools, whose nodes' runners report their own."""
    return {} if settings.cluster.pools else version_queries(settings, specs)


class HealthChecker:
    def __init__(self, settings: Settings, specs: Mapping[str, ToolSpec]) -> None:
        self.thresholds = settings.health
        self.problems = installation_problems(settings, specs)
        for name, problems in self.problems.items():
            for problem in problems:
                logger.warning("%s: %s", name, problem)
        self.binaries = BinaryProbe(_local_queries(settings, specs))
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # primes the counter so the first reading means something

    def close(self) -> None:
        self.binaries.close()

    def reconfigure(self, settings: Settings, specs: Mapping[str, ToolSpec]) -> None:
        """After a reload: new thresholds, and the serving tools' binaries probed anew (on the supervisor's thread)."""
        self.thresholds = settings.health
        self.problems = installation_problems(settings, specs)
        queries = _local_queries(settings, specs)
        if queries != self.binaries.queries:
            old, self.binaries = self.binaries, BinaryProbe(queries)
            old.close()

    def evaluate(self, tools: dict[str, ToolStatus], cluster: ClusterStatus | None = None) -> HealthStatus:
        """The verdict on `tools` (each slot, with pools one per tool and pool) and, given `cluster`, its pools."""
        t = self.thresholds
        checks = [self._system(t), self._process_check(t)]
        for name, info in self.binaries.results.items():
            probed = bool(info.get("probed"))
            problems = self.problems.get(name, ())
            ok = (bool(info.get("found") and info.get("executable", False)) or not probed) and not problems
            missing = f"{info['binary']} not found or not executable"
            detail = "; ".join([info.get("version") or (missing if probed else "probing"), *problems])
            data = {**info, "problems": list(problems)}
            checks.append(CheckResult(name=f"binary:{name}", ok=ok, critical=False, detail=detail, data=data))
        for name, problems in self.problems.items():  # with pools no binary is probed here, but calls are checked here
            if problems and name not in self.binaries.results:
                detail = "; ".join(problems)
                checks.append(CheckResult(name=f"install:{name}", ok=False, critical=False, detail=detail, data={}))
        for name, tool in tools.items():
            # A tool an operator or the config took out of service is not a fault.
            ok = tool.state in ("running", "disabled")
            why = tool.disabled_reason or tool.failed_reason or tool.last_restart_reason or ""
            detail = "running" if tool.state == "running" else f"{tool.state}: {why}".rstrip(": ")
            checks.append(CheckResult(name=f"actor:{name}", ok=ok, critical=False, detail=detail))
            breaker_ok = tool.breaker.state == "closed"
            checks.append(CheckResult(name=f"breaker:{name}", ok=breaker_ok, critical=False, detail=tool.breaker.state))
        if cluster is not None:
            checks += pool_checks(cluster)
        live_pools = {pool.name for pool in cluster.pools if pool.live} if cluster is not None else set()
        # A slot serves when its actor runs and, on a pool, a node of that pool is alive.
        serving = any(
            tool.state == "running" and (tool.pool is None or tool.pool in live_pools) for tool in tools.values()
        )
        serving_detail = "at least one tool serving" if serving else "no tool is serving"
        if not serving and cluster is not None and not live_pools:
            serving_detail += " (no scanner pool has a live node)"
        checks.append(CheckResult(name="tools", ok=serving, detail=serving_detail))
        return verdict(checks)

    def _system(self, t: HealthSettings) -> CheckResult:
        cpu = psutil.cpu_percent(interval=None)
        memory = psutil.virtual_memory().percent
        disk = psutil.disk_usage(os.getcwd()).percent
        problems = []
        if cpu > t.max_cpu_percent:
            problems.append(f"cpu {cpu:.0f}% > {t.max_cpu_percent:g}%")
        if memory > t.max_memory_percent:
            problems.append(f"memory {memory:.0f}% > {t.max_memory_percent:g}%")
        if disk > t.max_disk_percent:
            problems.append(f"disk {disk:.0f}% > {t.max_disk_percent:g}%")
        # Memory or disk exhaustion means scans will fail: that one is not merely degraded.
        critical = any(p.startswith(("memory", "disk")) for p in problems)
        return CheckResult(
            name="system",
            ok=not problems,
            critical=critical,
            detail="; ".join(problems) or "ok",
            data={"cpu_percent": cpu, "memory_percent": memory, "disk_percent": disk},
        )

    def _process_check(self, t: HealthSettings) -> CheckResult:
        with self._process.oneshot():
            rss_mb = self._process.memory_info().rss / (1 << 20)
            threads = self._process.num_threads()
            fds = self._process.num_fds() if hasattr(self._process, "num_fds") else 0
        problems = []
        if rss_mb > t.max_rss_mb:
            problems.append(f"rss {rss_mb:.0f} MB > {t.max_rss_mb:g} MB")
        if fds > t.max_open_fds:
            problems.append(f"{fds} open files > {t.max_open_fds}")
        return CheckResult(
            name="process",
            ok=not problems,
            critical=False,
            detail="; ".join(problems) or "ok",
            data={"rss_mb": round(rss_mb, 1), "threads": threads, "open_fds": fds},
        )
