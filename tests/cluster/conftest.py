"""Cluster tests: skipped unless this process is in a loopback-only network namespace (scripts/test-cluster).

One local Ray cluster serves the whole session: a head, node "a" advertising
`labrecon_a` and node "b" advertising `labrecon_b`. A test that removes a node
adds it back before it ends. Ray never starts outside such a namespace.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster.local_cluster import (
    SKIP_REASON,
    LocalCluster,
    environment,
    inside_loopback_namespace,
    ray_processes,
)
from tests.helpers import wait_until

POOLS = {"a": "labrecon_a", "b": "labrecon_b"}
# Ray's socket paths (temp dir, session dir, "sockets/plasma_store.N") must fit in 107 bytes.
LONGEST_TEMP_DIR = 38
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if inside_loopback_namespace():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The session's cluster (`.address`, `.nodes`, `add_node`, `remove_node`, `name_of`, `cluster_section`).

    Its files live in a temp dir of its own, so it never meets another cluster on
    this machine; on teardown no Ray process it started may be left.
    """
    if not inside_loopback_namespace():
        pytest.skip(SKIP_REASON)
    with contextlib.ExitStack() as cleanup:
        temp_dir = tmp_path_factory.mktemp("ray")
        if len(str(temp_dir)) > LONGEST_TEMP_DIR:
            temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
            cleanup.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        # RAY_TMPDIR keeps Ray's "current cluster" file (in its "ray") there too, rather than in the shared /tmp/ray.
        (temp_dir / "ray").mkdir()
        cleanup.enter_context(environment(RAY_TMPDIR=str(temp_dir), RAY_USAGE_STATS_ENABLED="0"))
        cleanup.callback(_assert_no_ray_process_left)  # also after a start that failed half-way
        cluster = LocalCluster.start(temp_dir, POOLS)
        cleanup.callback(cluster.shutdown)
        yield cluster


@pytest.fixture(autouse=True)
def _pool_nodes_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the pool nodes it removed (and did not add back) run again for the next one."""
    yield
    if "ray_cluster" in request.fixturenames:
        cluster: LocalCluster = request.getfixturevalue("ray_cluster")
        for name, resource in POOLS.items():
            if name not in cluster.nodes:
                cluster.add_node(name, resource)


@pytest.fixture
def ray_driver(ray_cluster: LocalCluster) -> Iterator[Any]:
    """The `ray` module, with this process connected to the cluster as its driver for the test."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _assert_no_ray_process_left() -> None:
    try:
        wait_until(lambda: not ray_processes(), timeout=30, interval=0.1, what="the cluster's processes to exit")
    except AssertionError:
        left = []
        for process in ray_processes():
            with contextlib.suppress(psutil.Error):
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
                process.kill()
        raise AssertionError(f"Ray processes left after shutdown: {left}") from None
