"""The daemon's Ray cluster: joining it, placing each pool slot's runner, and watching the pools' nodes.

Only the runners move to Ray nodes; admission, supervision and the policy stay here. `place` is the
supervisor's `Placement`: each incarnation of a pool slot gets a runner of its own, which Ray puts on
any node advertising the pool's resource and never restarts (our supervisor does, with its own
intensity and backoff). One watcher thread owns what is known of the nodes: every
`watch_interval_sec` it reads the cluster's nodes and the runners' reports and publishes a new
`ClusterStatus` (with when it was taken) in one assignment. Callers read the current view and never wait on Ray; a pool
without a live node refuses its calls at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from actors.launch import LAUNCH_HERE, Launch
from actors.ray_import import ray
from actors.remote_run import RemoteLaunch, reports_of
from actors.scanner_node import NodeReport
from actors.settings import PolicySettings
from supervisor.config import ClusterSettings, ConfigError, PoolSettings
from supervisor.slots import ToolSlot
from supervisor.status import ClusterStatus, NodeStatus, PoolStatus

__all__ = ["Cluster"]

logger = logging.getLogger(__name__)

# A view not renewed for this many watch intervals (plus a few seconds) counts no node as live.
_STALE_AFTER_INTERVALS = 3
# How long a runner may take to report on itself before the watcher moves on.
_REPORT_TIMEOUT_SEC = 2.0


class Cluster:
    """Connected to Ray from `connect` until `close`; `place` and `view` may be used from any thread."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.pools = {pool.name: pool for pool in settings.pools}
        self._runners: dict[str, RemoteLaunch] = {}  # slot name -> the launch of its newest incarnation
        self._runners_lock = threading.Lock()
        self._closed = threading.Event()
        # The last look at the nodes, and when it was taken on the monotonic clock; never looked at: no node.
        self._seen = (self._status([], []), -math.inf)
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
    def view(self) -> ClusterStatus:
        """The last look at the nodes; one the watcher could not renew (the head unreachable) shows no node,
        since it says nothing about the nodes now (`checked_at` says when they were last seen)."""
        view, seen_at = self._seen
        if time.monotonic() - seen_at <= _STALE_AFTER_INTERVALS * self.settings.watch_interval_sec + 5.0:
            return view
        gone = [pool.model_copy(update={"nodes": [], "live": False}) for pool in view.pools]
        return view.model_copy(update={"pools": gone})

    def live(self, pool: str) -> bool:
        """Whether a node of `pool` was alive at the last look, and that look is recent."""
        return any(seen.name == pool and seen.live for seen in self.view.pools)

    def refresh(self) -> ClusterStatus:
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

    def _publish(self, nodes: list[dict[str, Any]], reports: list[NodeReport]) -> ClusterStatus:
        self._seen = (self._status(nodes, reports), time.monotonic())  # one assignment: readers see both or neither
        return self._seen[0]

    def _status(self, nodes: list[dict[str, Any]], reports: list[NodeReport]) -> ClusterStatus:
        pools = [_pool_status(pool, nodes, reports) for pool in self.pools.values()]
        return ClusterStatus(address=self.settings.address, checked_at=time.time(), pools=pools)

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


def _pool_status(pool: PoolSettings, nodes: list[dict[str, Any]], reports: list[NodeReport]) -> PoolStatus:
    """The live nodes that advertise `pool`'s resource (Ray lists a dead node without its resources) (pure)."""
    views = []
    for node in nodes:
        if not node.get("Alive") or node.get("Resources", {}).get(pool.resource, 0) <= 0:
            continue
        node_id = str(node.get("NodeID", ""))
        mine = [report for report in reports if report.node == node_id]
        views.append(
            NodeStatus(
                node_id=node_id,
                address=str(node.get("NodeManagerAddress", "")),
                alive=True,
                tools={report.tool: report.version for report in mine},
                running=sum(report.running for report in mine),
                load=list(mine[0].load) if mine else None,
            )
        )
    networks = [str(network) for network in pool.networks]
    return PoolStatus(name=pool.name, resource=pool.resource, networks=networks, live=bool(views), nodes=views)
