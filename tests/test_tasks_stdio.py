"""MCP tasks over stdio, both eras, in raw JSON-RPC against a real `labrecon serve` on fake scanners.

The fake nmap blocks until the test creates its release file, so every "still working" below is a
fact, not a race; the store is a file the test reads back to know what each call must answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.install import install_fake
from tests.helpers import process_alive, wait_until
from tests.http_support import MODERN
from tests.runtimes import scan_calls
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
from tests.test_stdio_transport import INIT, TIMEOUT, LinePeer, wait_gone
from transports.mcp.tasks import EXTENSION, RELATED_TASK

LABRECON = str(Path(sys.executable).with_name("labrecon"))


class TaskServer(LinePeer):
    """`labrecon serve` over stdio on a fake nmap, its store a file in the test's directory."""

    def __init__(self, config: Path, grace: float) -> None:
        self.proc = subprocess.Popen(
            [LABRECON, "serve", "--config", str(config), "--grace", str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ["PATH"], "XDG_STATE_HOME": str(config.parent / "state")},
        )
        assert self.proc.stdin and self.proc.stdout
        super().__init__(self._write_stdin, iter(self.proc.stdout.readline, b""))

    def _write_stdin(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def initialize(self) -> dict[str, Any]:
        reply = self.request("initialize", INIT)
        self.notify("notifications/initialized")
        return reply

    def modern(self, method: str, params: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
        capabilities = meta.pop("capabilities", None)
        return self.request(method, {**(params or {}), "_meta": modern_meta(capabilities, **meta)})

    def dispose(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self.pump.join(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Lab:
    """One test's fake nmap (blocked until `release()`), its config and its scan store."""

    def __init__(self, directory: Path, mode: str = "block") -> None:
        self.directory = directory
        self.gate = directory / "release"
        self.store = directory / "scans.sqlite3"
        self.nmap = install_fake(directory / "bin", "nmap", mode=mode, release_file=str(self.gate))
        lines = ["[policy]", "dns = false", "[scans]", f'path = "{self.store}"', "inline_wait_sec = 0.0"]
        for tool in ("nmap", "masscan", "gobuster"):
            binary = self.nmap if tool == "nmap" else install_fake(directory / "bin", tool)
            lines += [f"[tools.{tool}]", f'binary = "{binary}"']
        self.config = directory / "labrecon.toml"
        self.config.write_text("\n".join(lines) + "\n")

    def release(self) -> None:
        self.gate.touch()

    def pids(self) -> list[int]:
        return [call["pid"] for call in scan_calls(self.nmap)]

    def running_pid(self, count: int = 1) -> int:
        return wait_until(lambda: len(self.pids()) >= count and self.pids()[count - 1], what="the fake nmap to start")


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


@pytest.fixture
def serve(lab: Lab) -> Iterator[Callable[..., TaskServer]]:
    servers: list[TaskServer] = []

    def start(grace: float = 1.0) -> TaskServer:
        servers.append(TaskServer(lab.config, grace))
        return servers[-1]

    yield start
    lab.release()
    for server in servers:
        server.dispose()


def is_status(task_id: str, status: str) -> Callable[[Any], bool]:
    return lambda m: (
        isinstance(m, dict) and m.get("method") == "notifications/tasks/status"
        and m["params"]["taskId"] == task_id and m["params"]["status"] == status
    )


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert "error" in reply, reply
    return reply["error"]


# ---------------------------------------------------------------- 2025-11-25


def test_a_task_call_answers_at_once_then_its_result_its_status_and_its_progress_follow(lab, serve) -> None:
    server = serve()
    init = server.initialize()["result"]
    assert init["capabilities"]["tasks"] == TASKS_CAPABILITY
    tools = {tool["name"]: tool for tool in server.request("tools/list")["result"]["tools"]}
    assert {name: tool["execution"]["taskSupport"] for name, tool in tools.items()} == {
        **dict.fromkeys(("nmap", "masscan", "gobuster"), "optional"),
        **dict.fromkeys(("scans_list", "scan_status", "scan_result", "scan_cancel"), "forbidden"),
    }

    created = server.request(
        "tools/call", {"name": "nmap", "arguments": NMAP, "task": {"ttl": 1000}, "_meta": {"progressToken": "p"}}
    )["result"]
    task = created["task"]
    check_handshake_task(task, "working")  # the store's retention, not the 1 s asked for
    task_id = task["taskId"]
    assert "scan_status" in created["_meta"]["io.modelcontextprotocol/model-immediate-response"]
    lab.running_pid()
    check_handshake_task(server.request("tasks/get", {"taskId": task_id})["result"], "working")
    listed = server.request("tasks/list")["result"]
    assert [t["taskId"] for t in listed["tasks"]] == [task_id] and "nextCursor" not in listed

    server.send({"jsonrpc": "2.0", "id": "result", "method": "tasks/result", "params": {"taskId": task_id}})
    lab.release()
    progress = server.wait_for(lambda m: isinstance(m, dict) and m.get("method") == "notifications/progress")
    assert progress["params"]["progressToken"] == "p"  # the call was answered long ago: the token still works
    assert progress["params"]["_meta"][RELATED_TASK] == {"taskId": task_id}
    status = server.wait_for(is_status(task_id, "completed"))["params"]
    check_handshake_task(status, "completed")

    result = server.reply("result")["result"]
    assert related(result) == task_id
    assert {k: v for k, v in result.items() if k != "_meta"} == stored_result(lab.store, task_id)
    assert result["structuredContent"]["status"] == "completed" and result["structuredContent"]["ok"] is True
    check_handshake_task(server.request("tasks/get", {"taskId": task_id})["result"], "completed")
    # A finished task cannot be cancelled any more.
    refused = error_of(server.request("tasks/cancel", {"taskId": task_id}))
    assert refused["code"] == -32602 and "already completed" in refused["message"]


def test_tasks_cancel_kills_the_process_and_answers_the_cancelled_task(lab, serve) -> None:
    server = serve()
    server.initialize()
    task_id = server.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})["result"]["task"]["taskId"]
    pid = lab.running_pid()
    assert process_alive(pid)
    cancelled = server.request("tasks/cancel", {"taskId": task_id})["result"]
    check_handshake_task(cancelled, "cancelled")
    assert not process_alive(pid)
    server.wait_for(is_status(task_id, "cancelled"))
    result = server.request("tasks/result", {"taskId": task_id})["result"]
    assert result["isError"] is True and result["structuredContent"]["error"]["error_type"] == "cancelled"
    assert error_of(server.request("tasks/cancel", {"taskId": task_id}))["code"] == -32602


def test_unknown_task_ids_and_bad_params_are_invalid_params(serve) -> None:
    server = serve()
    server.initialize()
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        unknown = error_of(server.request(method, {"taskId": UNKNOWN_ID}))
        assert unknown["code"] == -32602 and UNKNOWN_ID in unknown["message"], unknown
        assert error_of(server.request(method, {"taskId": 7}))["code"] == -32602
        assert error_of(server.request(method, {}))["code"] == -32602
    assert error_of(server.request("tasks/list", {"cursor": "not-ours"}))["code"] == -32602
    assert error_of(server.request("tasks/update", {"taskId": UNKNOWN_ID, "inputResponses": {}}))["code"] == -32601


def test_a_refused_task_call_is_a_task_that_already_failed(lab, serve) -> None:
    server = serve()
    server.initialize()
    created = server.request("tools/call", {"name": "nmap", "arguments": {"target": "8.8.8.8"}, "task": {}})
    task = created["result"]["task"]
    check_handshake_task(task, "failed")
    result = server.request("tasks/result", {"taskId": task["taskId"]})["result"]
    assert result["isError"] is True and result["structuredContent"]["error"]["error_type"] == "validation"
    assert not lab.pids()


def test_a_task_outlives_its_client_and_a_new_server_returns_its_result(lab, serve) -> None:
    first = serve(grace=30.0)
    first.initialize()
    task_id = first.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})["result"]["task"]["taskId"]
    lab.running_pid()
    assert first.proc.stdin is not None
    first.proc.stdin.close()  # the client goes away while the scan runs
    lab.release()
    assert first.proc.wait(timeout=TIMEOUT) == 0

    second = serve()
    second.initialize()
    result = second.request("tasks/result", {"taskId": task_id})["result"]
    assert {k: v for k, v in result.items() if k != "_meta"} == stored_result(lab.store, task_id)
    assert result["isError"] is False and related(result) == task_id


def test_a_task_whose_server_died_fails_with_a_json_rpc_error_in_both_eras(lab, serve) -> None:
    first = serve()
    first.initialize()
    task_id = first.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})["result"]["task"]["taskId"]
    pid = lab.running_pid()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=TIMEOUT)

    second = serve()
    wait_gone(pid)  # the next start ended what the dead one left running
    reply = second.modern("tasks/get", {"taskId": task_id})
    assert "result" in reply, reply
    modern = reply["result"]
    check_modern_task(modern, "failed")
    assert modern["error"]["code"] == -32603 and "result" not in modern
    assert modern["error"]["data"]["error_type"] == "interrupted"

    third = serve()
    third.initialize()
    check_handshake_task(third.request("tasks/get", {"taskId": task_id})["result"], "failed")
    lost = error_of(third.request("tasks/result", {"taskId": task_id}))
    assert lost["code"] == -32603 and lost["data"]["error_type"] == "interrupted"


# ---------------------------------------------------------------- 2026-07-28


def test_a_modern_call_that_outlives_its_wait_answers_a_task_tasks_get_finds(lab, serve) -> None:
    server = serve()
    discovered = server.modern("server/discover")["result"]
    assert discovered["capabilities"]["extensions"] == {EXTENSION: {}} and "tasks" not in discovered["capabilities"]
    tools = server.modern("tools/list")["result"]["tools"]
    assert all("execution" not in tool for tool in tools)

    created = server.modern("tools/call", {"name": "nmap", "arguments": NMAP})["result"]
    assert created["resultType"] == "task"
    check_modern_task(created, "working")
    task_id = created["taskId"]
    working = server.modern("tasks/get", {"taskId": task_id})["result"]
    assert working["resultType"] == "complete" and "result" not in working
    check_modern_task(working, "working")

    lab.release()
    done = wait_until(
        lambda: (r := server.modern("tasks/get", {"taskId": task_id})["result"])["status"] == "completed" and r,
        what="the task to complete",
    )
    check_modern_task(done, "completed")
    assert unstamped(done["result"]) == stored_result(lab.store, task_id, MODERN)
    assert done["result"]["resultType"] == "complete"
    # Cancelling a finished task is acknowledged, and changes nothing.
    assert server.modern("tasks/cancel", {"taskId": task_id})["result"]["resultType"] == "complete"
    assert server.modern("tasks/get", {"taskId": task_id})["result"]["status"] == "completed"


def test_without_the_extension_a_modern_call_answers_working_and_tasks_are_refused(lab, serve) -> None:
    server = serve()
    working = server.modern("tools/call", {"name": "nmap", "arguments": NMAP}, capabilities={})["result"]
    assert working["resultType"] == "complete" and working["structuredContent"]["status"] == "working"
    scan_id = working["structuredContent"]["scan_id"]
    for method in ("tasks/get", "tasks/cancel"):
        refused = error_of(server.modern(method, {"taskId": scan_id}, capabilities={}))
        assert refused["code"] == -32021
        assert refused["data"] == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
    # Methods this era does not define are not found, whoever asks.
    for capabilities in ({}, None):
        for method in ("tasks/result", "tasks/list"):
            params = {"taskId": scan_id} if method == "tasks/result" else {}
            assert error_of(server.modern(method, params, capabilities=capabilities))["code"] == -32601
    assert error_of(server.modern("tasks/get", {"taskId": UNKNOWN_ID}))["code"] == -32602
    assert error_of(server.modern("tasks/cancel", {"taskId": UNKNOWN_ID}))["code"] == -32602


def test_modern_tasks_cancel_acknowledges_and_the_process_is_gone(lab, serve) -> None:
    server = serve()
    task_id = server.modern("tools/call", {"name": "nmap", "arguments": NMAP})["result"]["taskId"]
    pid = lab.running_pid()
    assert server.modern("tasks/cancel", {"taskId": task_id})["result"] == {
        "resultType": "complete", "_meta": server.received[-1]["result"]["_meta"]
    }
    wait_gone(pid)
    cancelled = wait_until(
        lambda: (r := server.modern("tasks/get", {"taskId": task_id})["result"])["status"] != "working" and r
    )
    check_modern_task(cancelled, "cancelled")
    updated = server.modern("tasks/update", {"taskId": task_id, "inputResponses": {}})["result"]
    assert updated["resultType"] == "complete"


def test_a_tool_error_is_a_completed_modern_task_and_a_failed_handshake_one(tmp_path, serve) -> None:
    failing = Lab(tmp_path / "failing", mode="fail")
    server = TaskServer(failing.config, 1.0)
    try:
        created = server.modern("tools/call", {"name": "nmap", "arguments": NMAP})["result"]
        if created["resultType"] == "task":  # the failure may come back before the (zero) wait is over
            task_id = created["taskId"]
            done = wait_until(lambda: (r := server.modern("tasks/get", {"taskId": task_id})["result"])["status"]
                              != "working" and r)
        else:
            task_id = created["structuredContent"]["scan_id"]
            done = server.modern("tasks/get", {"taskId": task_id})["result"]
        check_modern_task(done, "completed")
        assert done["result"]["isError"] is True
    finally:
        server.dispose()
    handshake = TaskServer(failing.config, 1.0)
    try:
        handshake.initialize()
        check_handshake_task(handshake.request("tasks/get", {"taskId": task_id})["result"], "failed")
    finally:
        handshake.dispose()
