"""A daemon with scanner pools but no Ray: a stand-in cluster whose runs happen here and whose nodes a test sets.

The runtime joins its cluster in one place (`supervisor.runtime._join_cluster`); `pooled_runtime` puts
a `FakeCluster` there, so status, health, metrics, faults and controls of pools are tested in the main
suite. Everything that needs real nodes is in `tests/cluster`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actors.launch import LAUNCH_HERE, Launch
from actors.prepare import PreparedCall
from actors.settings import PolicySettings
from supervisor import runtime as runtime_module
from supervisor.config import ClusterSettings
from supervisor.runtime import Runtime
from supervisor.slots import ToolSlot
from supervisor.status import ClusterStatus
from tests.runtimes import fake_runtime

POOLS = (
    {"name": "a", "networks": ["10.0.0.0/24"], "resource": "labrecon_a"},
    {"name": "b", "networks": ["10.0.1.0/24"], "resource": "labrecon_b"},
)
ON_A = {"target": "10.0.0.5", "ports": "22"}
ON_B = {"target": "10.0.1.5", "ports": "22"}
NOWHERE = {"target": "10.0.9.5", "ports": "22"}  # allowed by the policy, in no pool

_node_ids = itertools.count(1)


def node(*, tools: dict[str, str | None] | None = None, running: int = 0) -> dict[str, Any]:
    """A live node as `NodeStatus` has it."""
    number = next(_node_ids)
    return {
        "node_id": f"{number:056x}", "address": f"127.0.0.{number % 200 + 2}", "alive": True,
        "tools": dict(tools or {"nmap": "Nmap version 7.94", "masscan": "Masscan version 1.3.2"}),
        "running": running, "load": [0.25, 0.5, 0.75],
    }


class FakeCluster:
    """What the runtime uses of `supervisor.cluster.Cluster`; every pool has one live node until a test says not."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.pools = {pool.name: pool for pool in settings.pools}
        self.nodes: dict[str, list[dict[str, Any]]] = {name: [node()] for name in self.pools}
        self.closed = False

    def place(self, slot: ToolSlot, policy: PolicySettings) -> Launch:
        return LAUNCH_HERE  # the pool's runs happen on this machine, with the fake scanners

    @property
    def view(self) -> ClusterStatus:
        pools = [
            {
                "name": pool.name, "resource": pool.resource, "networks": [str(n) for n in pool.networks],
                "live": self.live(pool.name), "nodes": list(self.nodes[pool.name]),
            }
            for pool in self.settings.pools
        ]
        return ClusterStatus.model_validate(
            {"address": self.settings.address, "checked_at": time.time(), "pools": pools}
        )

    def live(self, pool: str) -> bool:
        return any(n["alive"] for n in self.nodes.get(pool, ()))

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def pooled_runtimes(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`start(**config)` -> (runtime, its FakeCluster) on fakes, with pools "a" (10.0.0.0/24) and "b" (10.0.1.0/24);
    every runtime started is stopped on the way out."""
    clusters: list[FakeCluster] = []

    def join(settings: ClusterSettings) -> FakeCluster | None:
        if settings.engine != "ray":
            return None
        clusters.append(FakeCluster(settings))
        return clusters[-1]

    monkeypatch.setattr(runtime_module, "_join_cluster", join)
    with contextlib.ExitStack() as started:
        directories = (directory / f"pooled{n}" for n in itertools.count())

        def start(**config: Any) -> tuple[Runtime, FakeCluster]:
            cluster = {"engine": "ray", "address": "fake:6379", "pools": list(POOLS), **config.pop("cluster", {})}
            runtime = started.enter_context(fake_runtime(next(directories), cluster=cluster, **config))
            return runtime, clusters[-1]

        yield start


def retarget(prepared: PreparedCall, target: str) -> PreparedCall:
    """`prepared` aimed at `target` throughout, as a front that skipped its checks would build it."""
    return replace(
        prepared,
        target=target,
        resolved_targets=(target,),
        argv=(*prepared.argv[:-1], target),
        arguments={**prepared.arguments, "target": target},
    )
