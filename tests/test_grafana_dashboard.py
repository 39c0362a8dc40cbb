"""The Grafana dashboard in deploy/ queries only metrics and labels a running daemon serves on /metrics
(a daemon with scanner pools serves the pools' too)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until
from tests.http_support import running_daemon
from tests.pool_support import ON_A, ON_B, pooled_runtimes

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"

# Labels Prometheus attaches to every series it scrapes; no exporter serves them.
TARGET_LABELS = {"instance", "job"}

METRIC = re.compile(r"\blabrecon_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(labrecon_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")

Served = dict[str, list[dict[str, str]]]  # sample name -> the label sets it is served with


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']!r}", query["query"] if isinstance(query, dict) else query))
    return found


def served_metrics(text: str) -> Served:
    served: Served = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served.setdefault(sample.name, []).append(dict(sample.labels))
    return served


def problems(dashboard: dict[str, Any], served: Served) -> list[str]:
    """Every metric a query names that is not served, and every label it selects or groups by that its metrics lack."""
    found = []
    for where, expr in queries(dashboard):
        names = set(METRIC.findall(expr))
        if not names:
            found.append(f"{where}: queries no labrecon metric: {expr}")
        found += [f"{where}: {name} is not served" for name in sorted(names - served.keys())]
        labels_of = {name: {label for labels in served.get(name, []) for label in labels} for name in names}
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                if label not in labels_of[name]:
                    found.append(f"{where}: {name} has no label {label!r}")
                elif op == "=" and "$" not in value and all(s.get(label) != value for s in served.get(name, [])):
                    found.append(f"{where}: {name} is never served with {label}={value!r}")
        every_label = set().union(*labels_of.values()) | TARGET_LABELS
        grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        variable = LABEL_VALUES.fullmatch(expr.strip())
        if variable is not None:
            grouped.add(variable.group(2))
        found += [f"{where}: no metric it queries has a label {label!r}" for label in sorted(grouped - every_label)]
    return found


@pytest.fixture
def scraped(served):
    """/metrics of a daemon on fake tools, fetched over HTTP after an ok call and a crash with its restart
    (the call it crashed under retried)."""
    runtime, daemon = served()
    runtime.inject(tool="nmap", kind="crash", count=1)
    crashed = runtime.call("nmap", {"target": "10.0.0.5"})
    assert crashed.ok and crashed.attempts == 2, crashed
    assert runtime.call("nmap", {"target": "10.0.0.5"}).error_type is None
    url = f"{daemon.url}/metrics"

    def restart_timed() -> Served | None:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        served = served_metrics(response.text)
        return served if served.get("labrecon_actor_restart_seconds_bucket") else None

    return wait_until(restart_timed, 20.0, what="the restart time in /metrics")


@pytest.fixture
def scraped_with_pools(tmp_path, monkeypatch):
    """/metrics of a daemon with scanner pools "a" and "b" (a stand-in cluster, no Ray) after a call on each."""
    with pooled_runtimes(tmp_path, monkeypatch) as start:
        runtime, cluster = start()
        assert runtime.call("nmap", ON_A).ok and runtime.call("nmap", ON_B).ok
        cluster.nodes["b"] = []
        with running_daemon(runtime) as daemon:
            response = httpx.get(f"{daemon.url}/metrics", timeout=10)
    assert response.status_code == 200
    return served_metrics(response.text)


def both(*scrapes: Served) -> Served:
    """What daemons serve between them: with the pools' metrics only one of them has."""
    merged: Served = {}
    for served in scrapes:
        for name, label_sets in served.items():
            merged.setdefault(name, []).extend(label_sets)
    return merged


def test_every_metric_and_label_the_dashboard_queries_is_served(scraped, scraped_with_pools):
    assert problems(load_dashboard(), both(scraped, scraped_with_pools)) == []
    # A daemon without pools serves everything but the pools' own numbers.
    assert [problem for problem in problems(load_dashboard(), scraped) if "labrecon_pool_" not in problem] == []


def test_the_check_catches_a_panel_querying_what_is_not_served(scraped):
    dashboard = copy.deepcopy(load_dashboard())
    panel = next(panel for panel in panels(dashboard) if panel.get("targets"))
    panel["targets"] += [
        {"refId": "X", "expr": 'sum(rate(labrecon_tool_calls_failed_total{tool=~"$tool"}[5m]))'},
        {"refId": "Y", "expr": 'sum by (status) (labrecon_scans{tool=~"$tool"})'},
        {"refId": "Z", "expr": 'sum by (reason) (labrecon_breaker_state{state="broken"})'},
    ]
    where = f"panel {panel['title']!r}"
    assert [problem for problem in problems(dashboard, scraped) if problem.startswith(where)] == [
        f"{where}: labrecon_tool_calls_failed_total is not served",
        f"{where}: labrecon_tool_calls_failed_total has no label 'tool'",
        f"{where}: labrecon_scans has no label 'tool'",
        f"{where}: labrecon_breaker_state is never served with state='broken'",
        f"{where}: no metric it queries has a label 'reason'",
    ]


def test_the_dashboard_imports_with_a_prometheus_data_source_and_a_tool_variable():
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["tool"]["type"] == "query" and "label_values(" in variables["tool"]["definition"]
    assert variables["pool"]["type"] == "query" and "label_values(" in variables["pool"]["definition"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        if any(re.search(r"labrecon_(tool|breaker|actor)_", t["expr"]) for t in panel["targets"]):
            assert all('tool=~"$tool"' in t["expr"] for t in panel["targets"]), panel["title"]
        if any(re.search(r"labrecon_(tool|breaker|actor|call|pool)_", t["expr"]) for t in panel["targets"]):
            assert all('pool=~"$pool"' in t["expr"] for t in panel["targets"]), panel["title"]
    queried = {name for _, expr in queries(dashboard) for name in METRIC.findall(expr)}
    for metric in (
        "labrecon_tool_calls_total",
        "labrecon_tool_call_duration_seconds_bucket",
        "labrecon_tool_in_flight",
        "labrecon_tool_queue_depth",
        "labrecon_breaker_state",
        "labrecon_actor_restarts_total",
        "labrecon_scans",
        "labrecon_scan_store_bytes",
        "labrecon_scans_expired_total",
        "labrecon_tool_up",
        "labrecon_pool_nodes",
    ):
        assert metric in queried
