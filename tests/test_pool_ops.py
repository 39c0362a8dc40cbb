"""Operators see the scanner pools: status, health, readiness, metrics, faults and controls, without Ray.

The pools' runs happen here (`tests.pool_support.FakeCluster`), so every surface is exercised through
the runtime, `/status`, `/readyz`, `/metrics`, `/faults` and the `labrecon` commands; what only a real
cluster shows (nodes that come and go, versions found on them) is in `tests/cluster/test_pool_status.py`.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from actors.api import UnknownTool
from actors.results import ErrorType, InvalidCall
from supervisor.health import pool_checks, verdict
from supervisor.pools import metric_labels
from supervisor.status import (
    BreakerStatus,
    CheckResult,
    ClusterStatus,
    HealthStatus,
    RuntimeInfo,
    Status,
    ToolStatus,
)
from tests.helpers import wait_until
from tests.pool_support import NOWHERE, ON_A, ON_B, node, pooled_runtimes
from transports.cli import main
from transports.http.server import HttpServer
from transports.ops.endpoints import build_ops_app
from transports.ops.status_view import describe_fault, render_faults, render_status

SLOTS = {f"{tool}@{pool}" for tool in ("nmap", "masscan", "gobuster") for pool in ("a", "b")}


@pytest.fixture
def pooled(tmp_path, monkeypatch):
    with pooled_runtimes(tmp_path, monkeypatch) as start:
        yield start


@pytest.fixture
def ops(pooled):
    """(runtime, fake cluster, ops URL): a daemon with pools "a" and "b", its ops endpoints on 127.0.0.1."""
    runtime, cluster = pooled()
    with HttpServer.start(build_ops_app(runtime, runtime.settings), host="127.0.0.1", port=0) as server:
        yield runtime, cluster, server.url


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of `name` in a Prometheus text, by its label set."""
    found = {}
    for labels, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        found[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return found


# --- status ---------------------------------------------------------------------------------------


def test_status_shows_each_pool_with_its_nodes_and_each_pool_slot_with_its_tool_and_pool(ops):
    runtime, cluster, url = ops
    assert runtime.call("nmap", ON_A, timeout=30).ok
    status = runtime.status()
    assert status.cluster is not None and status.cluster.address == "fake:6379"
    pools = [(pool.name, pool.live, len(pool.nodes)) for pool in status.cluster.pools]
    assert pools == [("a", True, 1), ("b", True, 1)]
    (on_a,) = status.cluster.pools[0].nodes
    assert on_a.node_id == cluster.nodes["a"][0]["node_id"] and on_a.tools["nmap"] == "Nmap version 7.94"
    assert set(status.tools) == SLOTS
    assert (status.tools["nmap@a"].tool, status.tools["nmap@a"].pool) == ("nmap", "a")
    assert status.tools["nmap@a"].calls == {"ok": 1} and status.tools["nmap@b"].calls == {}

    served = httpx.get(f"{url}/status", timeout=10).json()
    assert served["cluster"]["pools"][1]["name"] == "b" and served["cluster"]["pools"][1]["resource"] == "labrecon_b"
    assert served["cluster"]["pools"][0]["nodes"][0]["load"] == [0.25, 0.5, 0.75]
    assert {(entry["tool"], entry["pool"]) for entry in served["tools"].values()} == {
        tuple(slot.split("@")) for slot in SLOTS
    }


def test_labrecon_status_prints_the_pools_and_their_nodes(capsys, ops):
    _, cluster, url = ops
    cluster.nodes["b"] = []
    code, out, err = run(capsys, "status", "--url", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("TOOL"))
    assert header.split()[:3] == ["TOOL", "POOL", "STATE"]
    rows = [line.split()[:3] for line in lines[lines.index(header) + 1 :][:6]]
    assert rows == [[tool, pool, "running"] for pool in "ab" for tool in ("nmap", "masscan", "gobuster")]
    assert "cluster: ray at fake:6379, nodes as seen " in out
    pools = lines[lines.index(next(line for line in lines if line.startswith("POOL  LIVE"))) :][:3]
    assert [line.split() for line in pools] == [
        ["POOL", "LIVE", "NODES", "RESOURCE", "NETWORKS"],
        ["a", "yes", "1", "labrecon_a", "10.0.0.0/24"],
        ["b", "NO", "0", "labrecon_b", "10.0.1.0/24"],
    ]
    node_a = cluster.nodes["a"][0]
    (row,) = [line for line in lines if node_a["node_id"] in line]
    assert row.split()[:6] == ["a", node_a["node_id"], node_a["address"], "0", "0.25", "0.50"]
    assert row.endswith("masscan Masscan version 1.3.2, nmap Nmap version 7.94")

    code, out, _ = run(capsys, "status", "--url", url, "--json")
    assert code == 0
    assert [pool["live"] for pool in json.loads(out)["cluster"]["pools"]] == [True, False]


def test_a_daemon_without_pools_shows_no_cluster_and_its_table_as_before(capsys, make_runtime):
    runtime = make_runtime()
    status = runtime.status()
    assert status.cluster is None
    assert [(entry.tool, entry.pool) for entry in status.tools.values()] == [
        ("nmap", None), ("masscan", None), ("gobuster", None)
    ]
    assert not any(check.name.startswith("pool:") for check in status.health.checks)
    text = render_status(status)
    assert "cluster:" not in text and "POOL" not in text
    assert "labrecon_pool_nodes" not in runtime.metrics_text()


def test_the_status_table_of_pools_reads_at_a_glance():
    def slot(name, **fields):
        base = {"name": name, "state": "running", "incarnation": 1, "restarts": 0,
                "breaker": BreakerStatus(state="closed"), "in_flight": 0, "queued": 0}
        return ToolStatus(**{**base, **fields})

    first, second = node(running=2), node(tools={"nmap": None})
    cluster = ClusterStatus.model_validate({
        "address": "10.1.0.1:6379", "checked_at": 0.0,
        "pools": [
            {"name": "dmz", "resource": "labrecon_dmz", "networks": ["10.20.0.0/16", "10.21.0.0/16"], "live": True,
             "nodes": [first, second]},
            {"name": "ot", "resource": "labrecon_ot", "networks": ["10.30.0.0/16"], "live": False, "nodes": []},
        ],
    })
    status = Status(
        runtime=RuntimeInfo(version="0.1.0", pid=1, uptime_sec=5.0, config_digest="abc"),
        tools={"nmap@dmz": slot("nmap@dmz", in_flight=2), "nmap@ot": slot("nmap@ot", state="restarting")},
        health=verdict([CheckResult(name="tools", ok=True), *pool_checks(cluster)]),
        cluster=cluster,
    )
    lines = render_status(status).splitlines()
    assert lines[1] == "health: degraded, ready"
    header = lines.index(next(line for line in lines if line.startswith("TOOL")))
    assert [line.split()[:4] for line in lines[header + 1 : header + 3]] == [
        ["nmap", "dmz", "running", "closed"], ["nmap", "ot", "restarting", "closed"]
    ]
    assert "cluster: ray at 10.1.0.1:6379, nodes as seen 1970-01-01 00:00:00 UTC" in lines
    assert any(line.split() == ["dmz", "yes", "2", "labrecon_dmz", "10.20.0.0/16,", "10.21.0.0/16"] for line in lines)
    assert any(line.split() == ["ot", "NO", "0", "labrecon_ot", "10.30.0.0/16"] for line in lines)
    (busy,) = [line for line in lines if first["node_id"] in line]
    assert busy.split()[3:7] == ["2", "0.25", "0.50", "0.75"]
    (silent,) = [line for line in lines if second["node_id"] in line]
    assert silent.endswith("nmap ?")
    checks = {line.split()[0]: line for line in lines if line.startswith("pool:")}
    assert checks["pool:dmz"].split()[1] == "warn" and "no version from nmap on a node" in checks["pool:dmz"]
    assert checks["pool:ot"].split()[1] == "warn" and "pool ot has no live node" in checks["pool:ot"]


# --- health and readiness -------------------------------------------------------------------------


def test_a_pool_without_a_live_node_degrades_health_and_readyz_verbose_lists_the_pools(ops):
    runtime, cluster, url = ops
    assert httpx.get(f"{url}/readyz?verbose", timeout=10).json()["pools"] == [
        {"name": "a", "live": True, "nodes": 1}, {"name": "b", "live": True, "nodes": 1}
    ]
    assert runtime.status().health.status in ("healthy", "degraded")  # degraded: a busy machine's CPU
    cluster.nodes["b"] = []

    health = runtime.status().health
    assert health.ready and health.status == "degraded"
    (check,) = [check for check in health.checks if check.name == "pool:b"]
    assert not check.ok and not check.critical
    assert check.detail == "pool b has no live node (none advertising labrecon_b); its calls get node_lost"
    assert next(check for check in health.checks if check.name == "pool:a").ok
    refused = runtime.call("nmap", ON_B, timeout=30)
    assert refused.error_type is ErrorType.NODE_LOST and "pool b has no live node" in refused.error.message

    response = httpx.get(f"{url}/readyz?verbose", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert (body["ready"], body["status"]) == (True, "degraded")
    assert body["pools"] == [{"name": "a", "live": True, "nodes": 1}, {"name": "b", "live": False, "nodes": 0}]
    assert {"name": "pool:b", "ok": False, "critical": False, "detail": check.detail} in body["checks"]
    assert "pools" not in httpx.get(f"{url}/readyz", timeout=10).json()


def test_with_no_live_node_in_any_pool_no_tool_serves_and_the_daemon_is_not_ready(ops):
    runtime, cluster, url = ops
    cluster.nodes["a"], cluster.nodes["b"] = [], []
    health = runtime.status().health
    assert not health.ready and health.status == "unhealthy"
    (tools,) = [check for check in health.checks if check.name == "tools"]
    assert tools.detail == "no tool is serving (no scanner pool has a live node)"
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    cluster.nodes["a"] = [node()]
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_a_node_whose_runner_found_no_version_of_its_tool_is_named_in_the_pools_check():
    broken, fine = node(tools={"nmap": None, "masscan": "1.3.2"}), node()
    cluster = ClusterStatus.model_validate({
        "address": "auto", "checked_at": 0.0,
        "pools": [{"name": "a", "resource": "r", "networks": ["10.0.0.0/24"], "live": True, "nodes": [broken, fine]}],
    })
    (check,) = pool_checks(cluster)
    assert (check.ok, check.critical) == (False, False)
    assert check.detail == "2 live nodes; no version from nmap on a node (binary missing?)"
    assert check.data == {"live": True, "nodes": 2, "resource": "r", "no_version": ["nmap"]}


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_carry_the_pool_and_the_tools_own_name(ops):
    runtime, cluster, url = ops
    assert runtime.call("nmap", ON_A, timeout=30).ok
    assert runtime.call("nmap", NOWHERE, timeout=30).error_type is ErrorType.VALIDATION  # before a pool was chosen
    cluster.nodes["b"] = []
    assert runtime.call("nmap", ON_B, timeout=30).error_type is ErrorType.NODE_LOST
    text = httpx.get(f"{url}/metrics", timeout=10).text

    calls = samples(text, "labrecon_tool_calls_total")
    assert calls[(("outcome", "ok"), ("pool", "a"), ("tool", "nmap"))] == 1
    assert calls[(("outcome", "validation"), ("pool", "none"), ("tool", "nmap"))] == 1
    assert calls[(("outcome", "node_lost"), ("pool", "b"), ("tool", "nmap"))] == 1
    assert {dict(labels)["pool"] for labels in calls} == {"a", "b", "none"}
    assert {dict(labels)["tool"] for labels in calls} == {"nmap", "masscan", "gobuster"}
    assert samples(text, "labrecon_tool_up") == {
        (("pool", pool), ("tool", tool)): 1.0 for pool in "ab" for tool in ("nmap", "masscan", "gobuster")
    }
    assert samples(text, "labrecon_tool_call_duration_seconds_count")[(("pool", "a"), ("tool", "nmap"))] == 1
    assert samples(text, "labrecon_breaker_state")[(("pool", "b"), ("state", "closed"), ("tool", "masscan"))] == 1
    assert samples(text, "labrecon_pool_nodes") == {(("pool", "a"),): 1.0, (("pool", "b"),): 0.0}
    assert "@" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


def test_a_retry_on_a_pool_is_counted_under_that_pool(pooled):
    runtime, _ = pooled()
    runtime.inject(tool="nmap", pool="b", kind="crash", count=1)
    outcome = runtime.call("nmap", ON_B, timeout=30)
    assert outcome.ok and outcome.attempts == 2
    retries = samples(runtime.metrics_text(), "labrecon_call_retries_total")
    assert retries[(("pool", "b"), ("reason", "actor_restarted"), ("tool", "nmap"))] == 1
    assert sum(retries.values()) == 1
    assert runtime.status().tools["nmap@b"].retries == {"actor_restarted": 1}


def test_the_labels_of_each_name_the_numbers_are_kept_under():
    assert metric_labels(["nmap", "masscan"]) == {"nmap": ("nmap", "local"), "masscan": ("masscan", "local")}
    assert metric_labels(["nmap@dmz", "nmap@ot", "nmap"]) == {
        "nmap@dmz": ("nmap", "dmz"), "nmap@ot": ("nmap", "ot"), "nmap": ("nmap", "none")
    }


# --- faults ---------------------------------------------------------------------------------------


def test_a_fault_for_one_pool_hits_only_that_pools_calls_and_is_listed_with_it(capsys, ops):
    runtime, _, url = ops
    code, out, err = run(capsys, "faults", "inject", "--url", url, "--tool", "nmap", "--pool", "b", "--kind", "fail")
    assert (code, out, err) == (0, "added fault 1: nmap@b fail, every call\n", "")
    assert runtime.call("nmap", ON_A, timeout=30).ok
    assert runtime.call("nmap", ON_B, timeout=30).error_type is ErrorType.EXECUTION
    (rule,) = runtime.faults()
    assert (rule["tool"], rule["pool"], rule["fired"], rule["seen"]) == ("nmap", "b", 1, 1)
    code, out, _ = run(capsys, "faults", "list", "--url", url)
    assert out.splitlines()[1].split() == ["1", "nmap@b", "fail", "every", "call", "-", "1/1", "yes"]
    assert httpx.get(f"{url}/faults", timeout=10).json()["faults"][0]["pool"] == "b"


def test_a_fault_for_an_unknown_pool_is_refused_naming_the_pool(capsys, ops):
    runtime, _, url = ops
    with pytest.raises(InvalidCall, match="no scanner pool is named 'c'; pools: a, b") as caught:
        runtime.inject(tool="nmap", pool="c", kind="crash")
    assert caught.value.field == "pool"
    response = httpx.post(f"{url}/faults", json={"tool": "nmap", "pool": "c", "kind": "runner_lost"}, timeout=10)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid", "message": "no scanner pool is named 'c'; pools: a, b", "field": "pool"
    }
    code, out, err = run(capsys, "faults", "inject", "--url", url, "--tool", "nmap", "--pool", "c", "--kind", "crash")
    assert (code, out) == (1, "")
    assert err == "labrecon: no scanner pool is named 'c'; pools: a, b (400 invalid)\n"
    assert runtime.faults() == []


def test_a_daemon_without_pools_refuses_a_pool_or_a_runner_lost_fault(make_runtime):
    runtime = make_runtime()
    with pytest.raises(InvalidCall, match=r"no scanner pool is named 'dmz'; pools: none \(every tool runs here\)"):
        runtime.inject(tool="nmap", pool="dmz", kind="crash")
    with pytest.raises(InvalidCall, match="runner_lost needs scanner pools") as caught:
        runtime.inject(tool="nmap", kind="runner_lost")
    assert caught.value.field == "kind" and runtime.faults() == []


def test_pool_faults_are_described_with_their_pool():
    rule = {"id": 4, "tool": "nmap", "pool": "dmz", "kind": "runner_lost", "count": 1, "fired": 0, "seen": 0}
    assert describe_fault(rule) == "fault 4: nmap@dmz runner_lost, next 1"
    assert render_faults([rule]).splitlines()[1].split()[:3] == ["4", "nmap@dmz", "runner_lost"]


# --- operator controls ----------------------------------------------------------------------------


def test_a_control_on_a_tool_acts_on_each_of_its_pools_and_on_one_slot_when_named(capsys, ops):
    runtime, _, url = ops
    code, out, _ = run(capsys, "tools", "restart", "nmap", "--url", url)
    assert code == 0 and out.count("restarting") == 2 and "nmap@a" in out and "nmap@b" in out
    wait_until(lambda: {runtime.status().tools[s].incarnation for s in ("nmap@a", "nmap@b")} == {2},
               what="both pools' nmap replaced")

    code, out, _ = run(capsys, "tools", "restart", "nmap@a", "--url", url)
    assert (code, out) == (0, "nmap@a restarting (incarnation 2 is being replaced)\n")
    wait_until(lambda: runtime.status().tools["nmap@a"].incarnation == 3, what="nmap@a replaced")
    assert runtime.status().tools["nmap@b"].incarnation == 2

    code, out, _ = run(capsys, "tools", "breaker", "masscan@b", "open", "--url", url)
    assert (code, out) == (0, "masscan@b breaker forced open\n")
    wait_until(lambda: runtime.status().tools["masscan@b"].breaker.state == "open", what="masscan@b open")
    assert runtime.status().tools["masscan@a"].breaker.state == "closed"
    assert runtime.call("masscan", {"target": "10.0.0.0/30", "ports": "80"}, timeout=30).ok
    assert runtime.call("masscan", {"target": "10.0.1.0/30", "ports": "80"}, timeout=30).error_type is (
        ErrorType.CIRCUIT_OPEN
    )
    assert run(capsys, "tools", "reset", "masscan@a", "--url", url)[0] == 0


def test_a_control_on_a_pool_the_tool_is_not_on_is_an_unknown_tool(capsys, ops):
    runtime, _, url = ops
    with pytest.raises(UnknownTool, match=r"unknown tool 'nmap@c'; available: nmap, nmap@a, nmap@b"):
        runtime.restart("nmap@c")
    code, out, err = run(capsys, "tools", "reset", "nmap@c", "--url", url)
    assert (code, out) == (1, "")
    assert err == "labrecon: unknown tool 'nmap@c'; available: nmap, nmap@a, nmap@b (404 not_found)\n"
    code, _, err = run(capsys, "tools", "breaker", "hydra@a", "open", "--url", url)
    assert code == 1 and "unknown tool 'hydra@a'; available: gobuster, masscan, nmap" in err


def test_a_daemon_without_pools_knows_no_slot_of_a_pool(capsys, make_runtime):
    runtime = make_runtime()
    with HttpServer.start(build_ops_app(runtime, runtime.settings), host="127.0.0.1", port=0) as server:
        code, _, err = run(capsys, "tools", "reset", "nmap@dmz", "--url", server.url)
    assert code == 1 and err == "labrecon: unknown tool 'nmap@dmz'; available: nmap (404 not_found)\n"


def test_health_verdicts_stay_as_they_were_for_checks_alone():
    assert verdict([CheckResult(name="tools", ok=True)]) == HealthStatus(
        live=True, ready=True, status="healthy", checks=[CheckResult(name="tools", ok=True)]
    )
    failing = [CheckResult(name="pool:a", ok=False, critical=False), CheckResult(name="tools", ok=False)]
    assert (verdict(failing).ready, verdict(failing).status) == (False, "unhealthy")


def test_with_pools_what_the_fronts_checks_need_but_miss_is_still_a_failing_check(pooled, tmp_path):
    """No binary is probed on the front, but calls are checked there: a missing nmap data directory shows."""
    runtime, _ = pooled(tools={"nmap": {"datadir": str(tmp_path / "no-nmap-data")}})
    checks = {check.name: check for check in runtime.status().health.checks}
    assert not any(name.startswith("binary:") for name in checks)
    assert not checks["install:nmap"].ok and "no-nmap-data" in checks["install:nmap"].detail
