"""A local Ray cluster for tests: a head and pool nodes on 127.0.0.1, started only in a loopback-only namespace.

Ray binds to the machine's own address, so it runs only where loopback is the
one interface there is (`inside_loopback_namespace`). Every Ray process a
cluster started is gone once `LocalCluster.shutdown` and `ray_processes` agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SKIP_REASON = "cluster tests run inside a loopback-only network namespace: scripts/test-cluster"
POOL_AMOUNT = 100  # of its pool resource a node advertises, as `ray start --resources` would
HEAD = "head"
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1
_RAY_SPEC = importlib.util.find_spec("ray")  # where Ray lives, without importing it
RAY_PACKAGE = (_RAY_SPEC.submodule_search_locations or [""])[0] if _RAY_SPEC else None


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """`values` set in this process's environment for the block, and put back as they were after it."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def inside_loopback_namespace() -> bool:
    """Whether this process's network namespace has exactly one interface: loopback, and it is up."""
    try:
        names = [name for _, name in socket.if_nameindex()]
        return names == ["lo"] and _is_up("lo")
    except OSError:
        return False


def _is_up(interface: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # only to ask the kernel; sends nothing
        request = struct.pack("16sH22x", interface.encode(), 0)
        flags = struct.unpack_from("H", fcntl.ioctl(probe.fileno(), SIOCGIFFLAGS, request), 16)[0]
    return bool(flags & IFF_UP)


def ray_processes() -> list[psutil.Process]:
    """Ray's processes in this network namespace, other than this one: the ones clusters started here."""
    if RAY_PACKAGE is None:
        return []
    namespace = os.readlink("/proc/self/ns/net")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid == os.getpid() or os.readlink(f"/proc/{process.pid}/ns/net") != namespace:
                continue
        except OSError:
            continue  # gone meanwhile
        cmdline = process.info["cmdline"] or []
        if any(arg.startswith("ray::") or RAY_PACKAGE in arg for arg in cmdline):
            found.append(process)  # raylet, gcs_server, workers ("ray::..."), Ray's own Python helpers
    return found


@dataclass
class LocalCluster:
    """Ray's test cluster with named nodes; each pool node advertises `POOL_AMOUNT` of one resource."""

    cluster: Any  # ray.cluster_utils.Cluster
    nodes: dict[str, Any] = field(default_factory=dict)  # name -> ray._private.node.Node

    @classmethod
    def start(cls, temp_dir: Path, pools: dict[str, str]) -> LocalCluster:
        """A head (no pool resource) and one node per `pools` entry (name -> resource), all on 127.0.0.1."""
        if not inside_loopback_namespace():
            raise RuntimeError(SKIP_REASON)
        from ray.cluster_utils import Cluster

        head_args = {"num_cpus": 1, "include_dashboard": False, "temp_dir": str(temp_dir)}
        cluster = cls(Cluster(initialize_head=True, head_node_args=head_args))
        cluster.nodes[HEAD] = cluster.cluster.head_node
        try:
            for name, resource in pools.items():
                cluster.add_node(name, resource)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    @property
    def address(self) -> str:
        """What `ray.init(address=...)` and `[cluster] address` take: the head's GCS, host:port."""
        return str(self.cluster.address)

    def cluster_section(self, *pools: dict[str, Any]) -> dict[str, Any]:
        """A `[cluster]` config section that runs `pools` (``[[cluster.pools]]`` entries) on this cluster."""
        return {"engine": "ray", "address": self.address, "pools": list(pools)}

    def add_node(self, name: str, resource: str) -> Any:
        """Start node `name` advertising `resource`; returns once the cluster knows it."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} is already running")
        self.nodes[name] = self.cluster.add_node(num_cpus=1, resources={resource: POOL_AMOUNT})
        return self.nodes[name]

    def remove_node(self, name: str) -> None:
        """Stop node `name` and every process of it; what ran there dies with it."""
        if name == HEAD:
            raise ValueError("the head stays while the cluster runs")
        self.cluster.remove_node(self.nodes.pop(name))

    def name_of(self, ray_node: dict[str, Any] | None) -> str | None:
        """The name of the node a fake scanner recorded (its call's ``ray_node``); None if not a current node."""
        node_id = (ray_node or {}).get("node_id")
        return next((name for name, node in self.nodes.items() if node.node_id == node_id), None)

    def shutdown(self) -> None:
        """Disconnect this process if it is connected, then stop every node, the head last."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
        self.nodes.clear()
