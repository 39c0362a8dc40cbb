"""MCP tasks over Streamable HTTP, both eras, in raw JSON-RPC with httpx against a daemon on 127.0.0.1.

Handshake-era tasks live beyond their session: the status and progress of a task arrive on the
session's standalone stream while one is open, and any session of the same owner reads the result.
2026-07-28 requests stand alone, routed by `Mcp-Name`, which must carry the task id.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp_types import HEADER_MISMATCH, MISSING_REQUIRED_CLIENT_CAPABILITY

from tests.helpers import process_alive, wait_until
from tests.http_support import (
    ACCEPT_BOTH,
    INITIALIZE,
    MODERN,
    events,
    fake_pids,
    messages_in,
    notification,
    request,
    session_headers,
)
from tests.tasks_support import (
    NMAP,
    TASKS_CAPABILITY,
    UNKNOWN_ID,
    check_handshake_task,
    check_modern_task,
    modern_meta,
    related,
    stored_result,
    unstamped,
)
from transports.mcp.tasks import EXTENSION, RELATED_TASK

TIMEOUT = 20.0


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "release"


@pytest.fixture
def lab(served, gate):
    """A daemon whose fake nmap blocks until `gate` exists; scanner calls wait for nothing."""
    runtime, daemon = served(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(gate)}}}, scans={"inline_wait_sec": 0}
    )
    yield runtime, daemon
    gate.touch()


def initialize(client: httpx.Client) -> tuple[str, dict[str, Any]]:
    response = client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = notification("notifications/initialized")
    assert client.post("/mcp", json=initialized, headers=session_headers(session_id)).status_code == 202
    return session_id, response.json()["result"]


def rpc(client: httpx.Client, session_id: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request in a session; its reply, whether it came as JSON or at the end of an event stream."""
    response = client.post("/mcp", json=request(method, params, 7), headers=session_headers(session_id))
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    (reply,) = [m for m in messages_in(response.text) if m.get("id") == 7]
    return reply


def modern(
    client: httpx.Client, method: str, params: dict[str, Any], *, name: str | None = None, capabilities: Any = None
) -> httpx.Response:
    """A stateless 2026-07-28 request; `Mcp-Name` is the task id (or the tool) unless `name` says otherwise."""
    body = request(method, {**params, "_meta": modern_meta(capabilities)})
    headers = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": method}
    routed = name if name is not None else params.get("taskId", params.get("name"))
    if routed:
        headers["mcp-name"] = routed
    return client.post("/mcp", json=body, headers=headers)


# ---------------------------------------------------------------- 2025-11-25


def test_a_task_reports_on_the_standalone_stream_and_tasks_result_blocks_until_it_ends(lab, gate) -> None:
    runtime, daemon = lab
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client, ThreadPoolExecutor(1) as pool:
        session_id, init = initialize(client)
        assert init["capabilities"]["tasks"] == TASKS_CAPABILITY
        tools = rpc(client, session_id, "tools/list")["result"]["tools"]
        assert {tool["name"]: tool["execution"]["taskSupport"] for tool in tools} == {
            **dict.fromkeys(("nmap", "masscan", "gobuster"), "optional"),
            **dict.fromkeys(("scans_list", "scan_status", "scan_result", "scan_cancel"), "forbidden"),
        }
        with client.stream("GET", "/mcp", headers=session_headers(session_id)) as standalone:
            assert standalone.status_code == 200
            created = rpc(client, session_id, "tools/call",
                          {"name": "nmap", "arguments": NMAP, "task": {}, "_meta": {"progressToken": 9}})["result"]
            check_handshake_task(created["task"], "working")
            task_id = created["task"]["taskId"]
            wait_until(lambda: fake_pids(runtime), what="the fake running")
            check_handshake_task(rpc(client, session_id, "tasks/get", {"taskId": task_id})["result"], "working")
            assert [t["taskId"] for t in rpc(client, session_id, "tasks/list")["result"]["tasks"]] == [task_id]

            with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as other:
                waiting = pool.submit(rpc, other, session_id, "tasks/result", {"taskId": task_id})
                gate.touch()
                pushed = events(standalone)
                progress = next(pushed).json()
                assert progress["method"] == "notifications/progress" and progress["params"]["progressToken"] == 9
                assert progress["params"]["_meta"][RELATED_TASK] == {"taskId": task_id}
                status = next(m for m in (e.json() for e in pushed) if m["method"] == "notifications/tasks/status")
                check_handshake_task(status["params"], "completed")
                result = waiting.result(TIMEOUT)["result"]
    assert related(result) == task_id
    assert {k: v for k, v in result.items() if k != "_meta"} == stored_result(runtime.settings.scans.path, task_id)


def test_a_task_survives_its_session_and_another_session_reads_its_result(lab, gate) -> None:
    runtime, daemon = lab
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client:
        first, _ = initialize(client)
        created = rpc(client, first, "tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})["result"]
        task_id = created["task"]["taskId"]
        pid = wait_until(lambda: fake_pids(runtime), what="the fake running")[0]
        assert client.delete("/mcp", headers=session_headers(first)).status_code == 204
        assert process_alive(pid)  # ending the session ends no task
        gate.touch()
        second, _ = initialize(client)
        result = rpc(client, second, "tasks/result", {"taskId": task_id})["result"]
    assert result["isError"] is False and related(result) == task_id
    assert {k: v for k, v in result.items() if k != "_meta"} == stored_result(runtime.settings.scans.path, task_id)


def test_tasks_cancel_over_http_kills_the_process_and_a_second_cancel_is_refused(lab) -> None:
    runtime, daemon = lab
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client:
        session_id, _ = initialize(client)
        created = rpc(client, session_id, "tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})["result"]
        task_id = created["task"]["taskId"]
        pid = wait_until(lambda: fake_pids(runtime), what="the fake running")[0]
        check_handshake_task(rpc(client, session_id, "tasks/cancel", {"taskId": task_id})["result"], "cancelled")
        assert not process_alive(pid)
        again = rpc(client, session_id, "tasks/cancel", {"taskId": task_id})["error"]
        assert again["code"] == -32602
        unknown = rpc(client, session_id, "tasks/get", {"taskId": UNKNOWN_ID})["error"]
        assert unknown["code"] == -32602


# ---------------------------------------------------------------- 2026-07-28


def test_a_modern_task_over_http_is_routed_by_its_id(lab, gate) -> None:
    runtime, daemon = lab
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client:
        discovered = modern(client, "server/discover", {}).json()["result"]
        assert discovered["capabilities"]["extensions"] == {EXTENSION: {}}
        created = modern(client, "tools/call", {"name": "nmap", "arguments": NMAP})
        assert created.status_code == 200
        task = created.json()["result"]
        assert task["resultType"] == "task"
        check_modern_task(task, "working")
        task_id = task["taskId"]
        # Found at once: the task exists before its CreateTaskResult is sent.
        check_modern_task(modern(client, "tasks/get", {"taskId": task_id}).json()["result"], "working")

        for name in ("nmap", UNKNOWN_ID, ""):
            mismatched = modern(client, "tasks/get", {"taskId": task_id}, name=name)
            assert mismatched.status_code == 400 and mismatched.json()["error"]["code"] == HEADER_MISMATCH
            assert "params.taskId" in mismatched.json()["error"]["message"]

        refused = modern(client, "tasks/get", {"taskId": task_id}, capabilities={})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == MISSING_REQUIRED_CLIENT_CAPABILITY
        assert refused.json()["error"]["data"] == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
        for method in ("tasks/result", "tasks/list"):
            absent = modern(client, method, {"taskId": task_id} if method == "tasks/result" else {})
            assert absent.status_code == 404 and absent.json()["error"]["code"] == -32601
        unknown = modern(client, "tasks/get", {"taskId": UNKNOWN_ID})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == -32602

        gate.touch()
        done = wait_until(
            lambda: (r := modern(client, "tasks/get", {"taskId": task_id}).json()["result"])["status"] == "completed"
            and r,
            what="the task to complete",
        )
    assert unstamped(done["result"]) == stored_result(runtime.settings.scans.path, task_id, MODERN)


def test_modern_tasks_cancel_over_http_acknowledges_and_ends_the_process(lab) -> None:
    runtime, daemon = lab
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client:
        task_id = modern(client, "tools/call", {"name": "nmap", "arguments": NMAP}).json()["result"]["taskId"]
        pid = wait_until(lambda: fake_pids(runtime), what="the fake running")[0]
        cancelled = modern(client, "tasks/cancel", {"taskId": task_id})
        assert cancelled.status_code == 200 and cancelled.json()["result"]["resultType"] == "complete"
        wait_until(lambda: not process_alive(pid), what="the fake killed")
        final = wait_until(
            lambda: (r := modern(client, "tasks/get", {"taskId": task_id}).json()["result"])["status"] != "working"
            and r
        )
        check_modern_task(final, "cancelled")
        # A terminal task's cancel is acknowledged too.
        assert modern(client, "tasks/cancel", {"taskId": task_id}).status_code == 200
