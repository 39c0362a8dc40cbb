"""The daemon's Ray cluster: joining it, placing each pool slot's runner, and watching the pools' nodes.

Only the runners move to Ray nodes; admission, supervision and the policy stay here. `place` is the
supervisor's `Placement`: each incarnation of a pool slot gets a runner of its own, which Ray puts on
any node advertising the pool's resource and never restarts (our supervisor does, with its own
intensity and backoff). One watcher thread owns what is known of the nodes: every
`watch_interval_sec` it reads the cluster's nodes and the runners' reports and publishes a new
`ClusterView` in one assignment. Callers read the current view and never wait on Ray; a pool
without a live node refuses its calls at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from actors.launch import LAUNCH_HERE, Launch
from actors.ray_import import ray
from actors.remote_run import RemoteLaunch, reports_of
from actors.scanner_node import NodeReport
from actors.settings import PolicySettings
from supervisor.config import ClusterSettings, ConfigError, PoolSettings
from supervisor.slots import ToolSlot

__all__ = ["Cluster", "ClusterView", "NodeView", "PoolView"]

logger = logging.getLogger(__name__)

# A view not renewed for this many watch intervals (plus a few seconds) counts no node as live.
_STALE_AFTER_INTERVALS = 3
# How long a runner may take to report on itself before the watcher moves on.
_REPORT_TIMEOUT_SEC = 2.0


@dataclass(frozen=True)
class NodeView:
    """One node advertising a pool's resource, as last seen."""

    node_id: str
    address: str
    alive: bool
    tools: Mapping[str, str | None] = field(default_factory=dict)  # tool -> the version its runner found
    running: int = 0  # processes its runners are running now
    load: tuple[float, float, float] | None = None  # the node's load average

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "address": self.address, "alive": self.alive, "tools": dict(self.tools),
            "running": self.running, "load": list(self.load) if self.load is not None else None,
        }


@dataclass(frozen=True)
class PoolView:
    name: str
    resource: str
    networks: tuple[str, ...]
    nodes: tuple[NodeView, ...] = ()

    @property
    def live(self) -> bool:
        return any(node.alive for node in self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "resource": self.resource, "networks": list(self.networks), "live": self.live,
            "nodes": [node.as_dict() for node in self.nodes],
        }


@dataclass(frozen=True)
class ClusterView:
    address: str
    pools: Mapping[str, PoolView]
    checked_at: float  # wall-clock time of the reading
    seen_at: float = 0.0  # the same, on the monotonic clock: how old the reading is

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": "ray", "address": self.address, "checked_at": self.checked_at,
            "pools": [pool.as_dict() for pool in self.pools.values()],
        }


class Cluster:
    """Connected to Ray from `connect` until `close`; `place` and `view` may be used from any thread."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.pools = {pool.name: pool for pool in settings.pools}
        self._runners: dict[str, RemoteLaunch] = {}  # slot name -> the launch of its newest incarnation
        self._runners_lock = threading.Lock()
        self._closed = threading.Event()
        self._view = ClusterView(settings.address, {name: _empty(pool) for name, pool in self.pools.items()}, 0.0)
        self._reports: list[NodeReport] = []  # the runners' last reports; the watcher's
        self._thread = threading.Thread(target=self._watch, name="labrecon-cluster", daemon=True)

    @classmethod
    def connect(cls, settings: ClusterSettings) -> Cluster:
        """Join the cluster `[cluster] address` names (or start one in-process for "local"), then watch it."""
        address = None if settings.address == "local" else settings.address
        local = {pool.resource: 1000.0 for pool in settings.pools} if address is None else None
        try:
            ray.init(
                address=address, namespace=settings.namespace, resources=local, include_dashboard=False,
                log_to_driver=False, configure_logging=False, ignore_reinit_error=True,
            )
        except Exception as exc:
            message = f"cluster.address: could not join the Ray cluster at {settings.address!r}: {exc}"
            raise ConfigError(message) from exc
        cluster = cls(settings)
        cluster.refresh()
        cluster._thread.start()
        return cluster

    # --- placement --------------------------------------------------------------------

    def place(self, slot: ToolSlot, policy: PolicySettings) -> Launch:
        """The launch for `slot`'s next incarnation: a new runner on a node of its pool, or this machine."""
        if slot.pool is None:
            return LAUNCH_HERE
        pool = slot.pool
        launch = RemoteLaunch(
            pool=pool.name, networks=pool.networks, resource=pool.resource, tool=slot.spec.name,
            settings=slot.settings, policy=policy, placement_timeout_sec=self.settings.placement_timeout_sec,
            live=lambda: self.live(pool.name),
        )
        with self._runners_lock:
            self._runners[slot.name] = launch
        return launch

    # --- the view of the nodes ---------------------------------------------------------

    @property
    def view(self) -> ClusterView:
        """The last look at the nodes; one the watcher could not renew (the head unreachable) shows no node,
        since it says nothing about the nodes now (`checked_at` says when they were last seen)."""
        view = self._view
        if time.monotonic() - view.seen_at <= _STALE_AFTER_INTERVALS * self.settings.watch_interval_sec + 5.0:
            return view
        return replace(view, pools={name: replace(pool, nodes=()) for name, pool in view.pools.items()})

    def live(self, pool: str) -> bool:
        """Whether a node of `pool` was alive at the last look, and that look is recent."""
        view = self.view.pools.get(pool)
        return view is not None and view.live

    def refresh(self) -> ClusterView:
        """Read the nodes, publish which are alive, then ask the runners for their reports and publish
        those too (the watcher's thread, or the caller of `connect` before the watcher starts).

        The nodes are published first: a pool that lost its last node refuses calls without waiting for
        runners that may not answer.
        """
        nodes = ray.nodes()
        self._publish(nodes, self._reports)
        with self._runners_lock:
            runners = list(self._runners.values())
        self._reports = reports_of(runners, timeout=_REPORT_TIMEOUT_SEC)
        return self._publish(nodes, self._reports)

    def _publish(self, nodes: list[dict[str, Any]], reports: list[NodeReport]) -> ClusterView:
        pools = {name: _pool_view(pool, nodes, reports) for name, pool in self.pools.items()}
        self._view = ClusterView(self.settings.address, pools, time.time(), time.monotonic())
        return self._view

    def _watch(self) -> None:
        while not self._closed.wait(self.settings.watch_interval_sec):
            try:
                self.refresh()
            except Exception:
                logger.exception("could not read the Ray cluster's nodes")

    def close(self) -> None:
        """Stop watching and leave the cluster (the runners have been closed by their incarnations)."""
        self._closed.set()
        self._thread.join(10.0)
        ray.shutdown()


def _empty(pool: PoolSettings) -> PoolView:
    return PoolView(pool.name, pool.resource, tuple(str(n) for n in pool.networks))


def _pool_view(pool: PoolSettings, nodes: list[dict[str, Any]], reports: list[NodeReport]) -> PoolView:
    """The live nodes that advertise `pool`'s resource (Ray lists a dead node without its resources) (pure)."""
    views = []
    for node in nodes:
        if not node.get("Alive") or node.get("Resources", {}).get(pool.resource, 0) <= 0:
            continue
        node_id = str(node.get("NodeID", ""))
        mine = [report for report in reports if report.node == node_id]
        views.append(
            NodeView(
                node_id=node_id,
                address=str(node.get("NodeManagerAddress", "")),
                alive=True,
                tools={report.tool: report.version for report in mine},
                running=sum(report.running for report in mine),
                load=mine[0].load if mine else None,
            )
        )
    return PoolView(pool.name, pool.resource, tuple(str(n) for n in pool.networks), tuple(views))
