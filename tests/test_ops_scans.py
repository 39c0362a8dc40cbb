"""Operators and the scans: the /scans endpoints over HTTP, `labrecon scans` as a separate process,
the store in /status and /metrics, and the audit lines of a scan's start, cancel and expiry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.api import Caller, local_user
from supervisor.runtime import Runtime
from supervisor.scans.records import ScanStatus
from tests.helpers import process_alive, wait_until
from tests.http_support import binary
from tests.runtimes import fake_config, scan_calls
from transports.ops.status_view import render_scans

LABRECON = str(Path(sys.executable).with_name("labrecon"))
NMAP = {"target": "10.0.0.5", "ports": "22"}


@pytest.fixture
def daemon(served):
    """A runtime whose nmap hangs with a child process, served over HTTP; masscan and gobuster answer."""
    runtime, server = served(tools={"nmap": {"scenario": {"mode": "hang_with_child"}}})
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield runtime, server, http


@pytest.fixture
def background() -> Iterator[Any]:
    """`background(runtime, tool, arguments)` runs a blocking call on a thread; joined at the end."""
    threads: list[threading.Thread] = []

    def start(runtime: Runtime, tool: str, arguments: dict[str, Any]) -> None:
        thread = threading.Thread(target=runtime.call, args=(tool, arguments), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(30.0)


def hanging_scan(runtime: Runtime, http: httpx.Client, background: Any) -> tuple[str, list[int]]:
    """Start an nmap call that hangs with a child; its scan id and the pids of its processes."""
    background(runtime, "nmap", NMAP)
    call = wait_until(lambda: (c := scan_calls(binary(runtime, "nmap"))) and c[-1].get("child_pid") and c[-1])
    (scan,) = http.get("/scans", params={"status": "working"}).json()["scans"]
    return scan["scan_id"], [call["pid"], call["child_pid"]]


def labrecon(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    return subprocess.run([LABRECON, *argv], capture_output=True, text=True, env=env, timeout=60)


# --- the endpoints ------------------------------------------------------------------------------


def test_scans_are_listed_newest_first_filtered_and_paged_each_once(daemon):
    runtime, _, http = daemon
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}).ok
    assert runtime.call("gobuster", {"target": "web.lab.internal"}).ok
    assert not runtime.call("masscan", {"target": "8.8.8.8", "ports": "80"}).ok

    listed = http.get("/scans")
    assert listed.status_code == 200
    scans = listed.json()["scans"]
    assert [(s["tool"], s["status"]) for s in scans] == [
        ("masscan", "failed"), ("gobuster", "completed"), ("masscan", "completed"),
    ]
    assert listed.json()["next_cursor"] is None
    assert all(s["owner"] == local_user() for s in scans)

    assert [s["status"] for s in http.get("/scans", params={"tool": "masscan"}).json()["scans"]] == [
        "failed", "completed",
    ]
    assert [s["tool"] for s in http.get("/scans", params={"status": "completed"}).json()["scans"]] == [
        "gobuster", "masscan",
    ]

    seen, cursor = [], None
    while True:
        page = http.get("/scans", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [s["scan_id"] for s in page["scans"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [s["scan_id"] for s in scans]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"tool": ""}, "tool"),
        ({"owner": ""}, "owner"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_query_value_is_400_naming_its_field(daemon, query, field):
    _, _, http = daemon
    answer = http.get("/scans", params=query)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid" and answer.json()["field"] == field
    assert answer.json()["message"]


def test_an_admin_lists_one_owners_scans_with_owner(daemon):
    runtime, _, http = daemon
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}, caller=Caller("team-a")).ok
    assert runtime.call("masscan", {"target": "10.0.0.6", "ports": "80"}).ok
    (theirs,) = http.get("/scans", params={"owner": "team-a"}).json()["scans"]
    assert theirs["owner"] == "team-a" and theirs["target"] == "10.0.0.5"
    assert len(http.get("/scans").json()["scans"]) == 2
    assert http.get("/scans", params={"owner": "nobody"}).json() == {"scans": [], "next_cursor": None}


def test_a_scan_is_shown_with_its_outcome_and_an_unknown_id_is_404(daemon):
    runtime, _, http = daemon
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}).ok
    (listed,) = http.get("/scans").json()["scans"]
    shown = http.get(f"/scans/{listed['scan_id']}").json()
    assert {k: shown[k] for k in listed} == listed
    assert shown["status"] == "completed" and shown["outcome"]["ok"] is True
    assert shown["outcome"]["returncode"] == 0 and shown["outcome"]["result"]["hosts"]
    assert "raw_output" not in shown["outcome"]

    for answer in (http.get("/scans/0123456789abcdef"), http.post("/scans/0123456789abcdef/cancel")):
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found" and "no scan '0123456789abcdef'" in answer.json()["message"]


def test_cancel_ends_the_process_group_and_answers_the_settled_record(daemon, background):
    runtime, _, http = daemon
    scan_id, pids = hanging_scan(runtime, http, background)
    running = http.get(f"/scans/{scan_id}").json()
    assert running["status"] == "working" and running["outcome"] is None

    cancelled = http.post(f"/scans/{scan_id}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["scan_id"] == scan_id and body["cancel_requested"] is True
    assert body["status"] == "cancelled" and body["error_type"] == "cancelled"
    assert body["outcome"]["error"]["error_type"] == "cancelled"
    wait_until(lambda: not any(process_alive(pid) for pid in pids), what="the scan's processes to end")

    again = http.post(f"/scans/{scan_id}/cancel").json()
    assert again["cancel_requested"] is False and again["status"] == "cancelled"


# --- status and metrics ---------------------------------------------------------------------------


def scan_metrics(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in re.findall(r"^(labrecon_scan\S*) (\S+)$", text, re.MULTILINE)
    }


def test_status_and_metrics_show_the_store_and_what_expired(tmp_path):
    now = [1_000_000.0]
    runtime = Runtime.start(
        fake_config(tmp_path / "fakes", scans={"retention_days": 1}), clock=lambda: now[0]
    )
    try:
        assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}).ok
        assert not runtime.call("masscan", {"target": "8.8.8.8", "ports": "80"}).ok
        store = runtime.status().scans
        assert store is not None and store.path == runtime.settings.scans.path
        assert store.counts == {"working": 0, "completed": 1, "failed": 1, "cancelled": 0}
        assert store.size_bytes > 0 and store.expired_total == 0
        numbers = scan_metrics(runtime.metrics_text())
        assert numbers['labrecon_scans{status="completed"}'] == 1.0
        assert numbers['labrecon_scans{status="failed"}'] == 1.0
        assert numbers['labrecon_scans{status="working"}'] == 0.0
        assert numbers["labrecon_scan_store_bytes"] > 0
        assert numbers["labrecon_scans_expired_total"] == 0.0

        now[0] += 2 * 86_400
        assert runtime.scans.expire() == 2
        store = runtime.status().scans
        assert store is not None and store.expired_total == 2 and sum(store.counts.values()) == 0
        numbers = scan_metrics(runtime.metrics_text())
        assert numbers["labrecon_scans_expired_total"] == 2.0
        assert numbers['labrecon_scans{status="completed"}'] == 0.0
    finally:
        runtime.stop(grace=2.0)


def test_status_endpoint_and_table_show_the_store(daemon, capsys):
    runtime, server, http = daemon
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}).ok
    store = http.get("/status").json()["scans"]
    assert store["path"] == runtime.settings.scans.path and store["size_bytes"] > 0
    assert store["counts"]["completed"] == 1 and store["expired_total"] == 0

    shown = labrecon("status", "--url", server.url)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.startswith("scans:"))
    assert "working 0, completed 1, failed 0, cancelled 0" in line
    assert runtime.settings.scans.path in line and "0 expired" in line


# --- the audit log --------------------------------------------------------------------------------


def test_the_audit_log_records_start_answer_cancel_and_expiry(tmp_path, background):
    audit = tmp_path / "audit.jsonl"
    now = [1_000_000.0]
    config = fake_config(
        tmp_path / "fakes", tools={"nmap": {"scenario": {"mode": "hang"}}},
        logging={"audit_path": str(audit)}, scans={"retention_days": 1},
    )
    runtime = Runtime.start(config, clock=lambda: now[0])
    try:
        assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}, caller=Caller("team-a")).ok
        background(runtime, "nmap", NMAP)
        wait_until(lambda: scan_calls(binary(runtime, "nmap")), what="nmap to start")
        (hanging,), _ = runtime.scans.page(Caller("root", admin=True), status=ScanStatus.WORKING)
        assert runtime.scans.cancel(Caller("ops-admin", admin=True, detail="ops http"), hanging.scan_id)
        wait_until(lambda: runtime.scans.get(Caller("x", admin=True), hanging.scan_id).status.terminal)
        now[0] += 2 * 86_400
        assert runtime.scans.expire() == 2
    finally:
        runtime.stop(grace=2.0)

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    events = [line["event"] for line in lines]
    assert events == [
        "scan_started", "call_answered", "scan_started", "scan_cancel_requested", "call_answered", "scans_expired",
    ]
    started, answered, nmap_started, cancel, cancelled, expired = lines
    assert started["owner"] == "team-a" and started["tool"] == "masscan" and started["target"] == "10.0.0.5"
    assert answered["call_id"] == started["call_id"] and answered["outcome"] == "ok"
    assert nmap_started["scan_id"] == cancel["scan_id"] == hanging.scan_id
    assert cancel["owner"] == local_user() and cancel["by"] == "ops-admin" and cancel["via"] == "ops http"
    assert cancelled["outcome"] == "cancelled"
    assert sorted(expired["scans"], key=lambda s: s["owner"]) == sorted(
        [{"scan_id": started["scan_id"], "owner": "team-a"}, {"scan_id": hanging.scan_id, "owner": local_user()}],
        key=lambda s: s["owner"],
    )


# --- the command line -----------------------------------------------------------------------------


def test_scans_list_prints_a_table_or_json_and_follows_every_page(daemon):
    runtime, server, _ = daemon
    assert runtime.call("masscan", {"target": "10.0.0.5", "ports": "80"}).ok
    assert runtime.call("gobuster", {"target": "web.lab.internal"}).ok

    table = labrecon("scans", "list", "--url", server.url)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["SCAN", "TOOL", "STATUS", "TARGET", "CREATED", "(UTC)", "TIME/PROGRESS", "OWNER"]
    assert [row.split()[1:3] for row in rows] == [["gobuster", "completed"], ["masscan", "completed"]]
    assert "web.lab.internal (10.0.0.7)" in rows[0] and rows[0].split()[-1] == local_user()

    first = labrecon("scans", "list", "--url", server.url, "--limit", "1", "--json")
    assert first.returncode == 0 and "--all-pages" not in first.stdout
    page = json.loads(first.stdout)
    assert len(page["scans"]) == 1 and page["next_cursor"]
    every = json.loads(labrecon("scans", "list", "--url", server.url, "--limit", "1", "--all-pages", "--json").stdout)
    assert [s["tool"] for s in every["scans"]] == ["gobuster", "masscan"] and every["next_cursor"] is None

    only = json.loads(labrecon("scans", "list", "--url", server.url, "--tool", "masscan", "--json").stdout)
    assert [s["tool"] for s in only["scans"]] == ["masscan"]
    usage = labrecon("scans", "list", "--url", server.url, "--limit", "500")
    assert usage.returncode == 2 and "from 1 to 200" in usage.stderr


def test_scans_show_and_cancel_from_the_command_line(daemon, background):
    runtime, server, http = daemon
    scan_id, pids = hanging_scan(runtime, http, background)

    shown = labrecon("scans", "show", scan_id, "--url", server.url)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["scan"] == scan_id and fields["status"] == "working" and fields["target"] == "10.0.0.5"

    cancelled = labrecon("scans", "cancel", scan_id, "--url", server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"scan {scan_id} cancelled\n"
    wait_until(lambda: not any(process_alive(pid) for pid in pids), what="the scan's processes to end")

    again = labrecon("scans", "cancel", scan_id, "--url", server.url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["cancel_requested"] is False
    assert labrecon("scans", "cancel", scan_id, "--url", server.url).stdout == (
        f"scan {scan_id} had already finished: cancelled\n"
    )
    final = json.loads(labrecon("scans", "show", scan_id, "--url", server.url, "--json").stdout)
    assert final["status"] == "cancelled" and final["outcome"]["error"]["error_type"] == "cancelled"


@pytest.mark.parametrize("action", ["show", "cancel"])
def test_an_unknown_scan_id_exits_1_with_a_clear_message(daemon, action):
    _, server, _ = daemon
    answer = labrecon("scans", action, "feedfacefeedface", "--url", server.url)
    assert answer.returncode == 1 and answer.stdout == ""
    assert "no scan 'feedfacefeedface': unknown, expired, or not yours (404 not_found)" in answer.stderr


def test_an_empty_store_lists_no_scans():
    assert render_scans([]) == "no scans"
