"""Operators see the pools of a real (local) Ray cluster: /status, `labrecon status`, /readyz, /metrics, /faults.

A daemon with pool "a" (node a, 10.0.0.0/24) and pool "b" (node b, 10.0.1.0/24) on the session's cluster,
its tools the fake scanners; what its watcher reports is read through the ops endpoints and the CLI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors.results import ErrorType
from supervisor.runtime import Runtime
from tests.helpers import wait_until
from tests.http_support import running_daemon
from tests.runtimes import fake_config
from tests.test_grafana_dashboard import load_dashboard, problems, served_metrics
from transports.cli import main

POOL_A = {"name": "a", "networks": ["10.0.0.0/24"], "resource": "labrecon_a"}
POOL_B = {"name": "b", "networks": ["10.0.1.0/24"], "resource": "labrecon_b"}
ON_A = {"target": "10.0.0.5", "ports": "22"}
ON_B = {"target": "10.0.1.5", "ports": "22"}
FAKE_NMAP_VERSION = "Nmap version 7.93 ( https://nmap.org )"
WAIT = 60.0  # a hang guard: nodes are seen within a few watch intervals


@pytest.fixture
def daemon(ray_cluster, tmp_path) -> Iterator[tuple[Runtime, str]]:
    """(runtime, URL): a daemon on the cluster with pools "a" and "b", its HTTP endpoints on 127.0.0.1."""
    config = fake_config(
        tmp_path, cluster=ray_cluster.cluster_section(POOL_A, POOL_B), tools={"nmap": {"retry": {"attempts": 0}}}
    )
    runtime = Runtime.start(config)
    try:
        with running_daemon(runtime) as served:
            yield runtime, served.url
    finally:
        runtime.stop(grace=2.0)


def get(url: str, path: str) -> Any:
    response = httpx.get(url + path, timeout=30)
    return response.json() if response.headers["content-type"].startswith("application/json") else response.text


def pools_of(url: str) -> dict[str, dict[str, Any]]:
    return {pool["name"]: pool for pool in get(url, "/status")["cluster"]["pools"]}


def nmap_seen(url: str, pool: str) -> dict[str, Any] | None:
    """The pool's node whose runner reported nmap's version, once the watcher has it."""
    return next((node for node in pools_of(url)[pool]["nodes"] if node["tools"].get("nmap")), None)


def test_status_shows_both_pools_and_their_nodes_with_the_version_found_there(daemon, ray_cluster, capsys):
    runtime, url = daemon
    assert runtime.call("nmap", ON_A, timeout=WAIT).ok and runtime.call("nmap", ON_B, timeout=WAIT).ok

    for pool in ("a", "b"):
        seen = wait_until(lambda pool=pool: nmap_seen(url, pool), WAIT, what=f"pool {pool}'s nmap version")
        assert seen["node_id"] == ray_cluster.nodes[pool].node_id and seen["alive"] is True
        assert seen["tools"]["nmap"] == FAKE_NMAP_VERSION and len(seen["load"]) == 3
    status = get(url, "/status")
    assert status["cluster"]["address"] == ray_cluster.address
    assert [(p["name"], p["resource"], p["networks"], p["live"]) for p in status["cluster"]["pools"]] == [
        ("a", "labrecon_a", ["10.0.0.0/24"], True), ("b", "labrecon_b", ["10.0.1.0/24"], True)
    ]
    assert (status["tools"]["nmap@b"]["tool"], status["tools"]["nmap@b"]["pool"]) == ("nmap", "b")
    assert status["tools"]["nmap@a"]["calls"] == {"ok": 1}

    assert get(url, "/readyz?verbose")["pools"] == [
        {"name": "a", "live": True, "nodes": 1}, {"name": "b", "live": True, "nodes": 1}
    ]
    metrics = get(url, "/metrics")
    assert 'labrecon_tool_calls_total{outcome="ok",pool="a",tool="nmap"} 1.0' in metrics
    assert 'labrecon_tool_calls_total{outcome="ok",pool="b",tool="nmap"} 1.0' in metrics
    assert 'labrecon_pool_nodes{pool="a"} 1.0' in metrics and 'labrecon_pool_nodes{pool="b"} 1.0' in metrics

    assert main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^a +yes +1 +labrecon_a +10\.0\.0\.0/24$", out, re.M)
    (row,) = [line for line in out.splitlines() if ray_cluster.nodes["b"].node_id in line]
    assert row.startswith("b ") and f"nmap {FAKE_NMAP_VERSION}" in row


def test_a_pool_whose_node_is_removed_is_shown_not_live_and_degrades_health(daemon, ray_cluster, capsys):
    runtime, url = daemon
    wait_until(lambda: all(pool["live"] for pool in pools_of(url).values()), WAIT, what="both pools live")
    ray_cluster.remove_node("b")

    wait_until(lambda: not pools_of(url)["b"]["live"], WAIT, what="pool b seen without a live node")
    assert pools_of(url)["b"]["nodes"] == [] and pools_of(url)["a"]["live"]
    health = runtime.status().health
    assert health.ready and health.status == "degraded"
    (check,) = [check for check in health.checks if check.name == "pool:b"]
    assert not check.ok and "pool b has no live node" in check.detail
    readyz = httpx.get(f"{url}/readyz?verbose", timeout=30)
    assert readyz.status_code == 200
    assert readyz.json()["pools"] == [{"name": "a", "live": True, "nodes": 1}, {"name": "b", "live": False, "nodes": 0}]
    assert 'labrecon_pool_nodes{pool="b"} 0.0' in get(url, "/metrics")
    refused = runtime.call("nmap", ON_B, timeout=WAIT)
    assert refused.error_type is ErrorType.NODE_LOST
    assert runtime.call("nmap", ON_A, timeout=WAIT).ok

    assert main(["status", "--url", url, "--json"]) == 0  # still ready: pool a serves
    assert [pool["live"] for pool in json.loads(capsys.readouterr().out)["cluster"]["pools"]] == [True, False]


def test_a_runner_lost_fault_on_one_pool_answers_node_lost_and_the_runner_comes_back(daemon, capsys):
    runtime, url = daemon
    assert runtime.call("nmap", ON_A, timeout=WAIT).ok
    assert main(["faults", "inject", "--url", url, "--tool", "nmap", "--pool", "a", "--kind", "runner_lost",
                 "--count", "1"]) == 0
    assert capsys.readouterr().out == "added fault 1: nmap@a runner_lost, next 1\n"

    assert runtime.call("nmap", ON_B, timeout=WAIT).ok  # pool b's runner is not touched
    lost = runtime.call("nmap", ON_A, timeout=WAIT)
    assert lost.error_type is ErrorType.NODE_LOST
    wait_until(lambda: runtime.status().tools["nmap@a"].incarnation == 2, WAIT, what="nmap@a restarted")
    assert runtime.call("nmap", ON_A, timeout=WAIT).ok
    assert runtime.status().tools["nmap@b"].incarnation == 1
    (rule,) = get(url, "/faults")["faults"]
    assert (rule["pool"], rule["kind"], rule["fired"]) == ("a", "runner_lost", 1)

    def restart_timed() -> str | None:
        text = get(url, "/metrics")
        return text if 'labrecon_actor_restart_seconds_count{pool="a",tool="nmap"} 1.0' in text else None

    metrics = wait_until(restart_timed, WAIT, what="the restart time in /metrics")
    assert 'labrecon_tool_calls_total{outcome="node_lost",pool="a",tool="nmap"} 1.0' in metrics
    assert 'labrecon_actor_restarts_total{pool="a",reason="crash",tool="nmap"} 1.0' in metrics
    # Every metric and label the dashboard queries is served by a daemon with pools.
    assert problems(load_dashboard(), served_metrics(metrics)) == []
