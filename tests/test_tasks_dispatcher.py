"""Tasks through the dispatcher: owners kept apart, and only where a revision defines them.

A task id taken from another owner must answer exactly as an id that never existed, in both eras
and for every task method; revisions before 2025-11-25, and backends that keep no scans, see no
tasks at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.tasks_support import NMAP, UNKNOWN_ID, check_handshake_task, modern_meta
from tests.test_mcp_dispatcher import Peer, error_of, run
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import Session


@pytest.fixture
def blocked(make_runtime, tmp_path: Path):
    gate = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(gate)}}},
        scans={"path": ":memory:", "inline_wait_sec": 0},
    )
    yield runtime
    gate.touch()


def peer(runtime: Any, owner: str, *, modern: bool = False) -> Peer:
    session = Session.modern() if modern else Session()
    session.owner = owner
    return Peer(runtime, session, scans=ScanAccess.of(runtime))


async def ask(client: Peer, method: str, task_id: str, *, modern: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"taskId": task_id}
    if modern:
        params["_meta"] = modern_meta()
    return error_of(await client.request(method, params))


def test_another_owners_task_answers_exactly_as_an_unknown_one(blocked) -> None:
    async def scenario() -> None:
        alice, bob = peer(blocked, "alice"), peer(blocked, "bob")
        await alice.initialize()
        await bob.initialize()
        created = await alice.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})
        task_id = created["result"]["task"]["taskId"]
        bob_modern = peer(blocked, "bob", modern=True)
        for client, methods, modern in (
            (bob, ("tasks/get", "tasks/result", "tasks/cancel"), False),
            (bob_modern, ("tasks/get", "tasks/cancel", "tasks/update"), True),
        ):
            for method in methods:
                if method == "tasks/update":
                    reply = await client.request(
                        method, {"taskId": task_id, "inputResponses": {}, "_meta": modern_meta()}
                    )
                    foreign = error_of(reply)
                    unknown = error_of(await client.request(
                        method, {"taskId": UNKNOWN_ID, "inputResponses": {}, "_meta": modern_meta()}
                    ))
                else:
                    foreign = await ask(client, method, task_id, modern=modern)
                    unknown = await ask(client, method, UNKNOWN_ID, modern=modern)
                assert foreign["code"] == unknown["code"] == -32602
                assert foreign == {**unknown, "message": unknown["message"].replace(UNKNOWN_ID, task_id)}, method
        assert (await bob.request("tasks/list"))["result"] == {"tasks": []}
        # Nothing bob did reached alice's task.
        check_handshake_task((await alice.request("tasks/get", {"taskId": task_id}))["result"], "working")
        listed = (await alice.request("tasks/list"))["result"]["tasks"]
        assert [task["taskId"] for task in listed] == [task_id]

    run(scenario())


def test_tasks_list_pages_with_an_opaque_cursor(blocked) -> None:
    async def scenario() -> None:
        alice = peer(blocked, "alice")
        await alice.initialize()
        made = set()
        for _ in range(52):
            reply = await alice.request("tools/call", {"name": "nmap", "arguments": {"target": "8.8.8.8"}, "task": {}})
            made.add(reply["result"]["task"]["taskId"])
        first = (await alice.request("tasks/list"))["result"]
        second = (await alice.request("tasks/list", {"cursor": first["nextCursor"]}))["result"]
        assert len(first["tasks"]) == 50 and "nextCursor" not in second
        assert {task["taskId"] for task in first["tasks"] + second["tasks"]} == made

    run(scenario())


def test_revisions_before_tasks_see_none_and_ignore_params_task(blocked) -> None:
    async def scenario() -> None:
        old = peer(blocked, "alice")
        init = await old.initialize("2025-06-18")
        assert "tasks" not in init["result"]["capabilities"]
        tools = (await old.request("tools/list"))["result"]["tools"]
        assert tools and all("execution" not in tool for tool in tools)
        assert error_of(await old.request("tasks/get", {"taskId": UNKNOWN_ID}))["code"] == -32601
        answered = (await old.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}}))["result"]
        assert "task" not in answered and answered["structuredContent"]["status"] == "working"

    run(scenario())


def test_a_backend_that_keeps_no_scans_offers_no_tasks() -> None:
    async def scenario() -> None:
        plain = Peer()
        init = await plain.initialize()
        assert "tasks" not in init["result"]["capabilities"]
        tools = (await plain.request("tools/list"))["result"]["tools"]
        assert all("execution" not in tool for tool in tools)
        assert error_of(await plain.request("tasks/list"))["code"] == -32601
        discovered = await Peer(session=Session.modern()).request("server/discover", {"_meta": modern_meta()})
        assert "extensions" not in discovered["result"]["capabilities"]

    run(scenario())


def test_every_tool_listed_as_forbidden_refuses_to_run_as_a_task(blocked) -> None:
    async def scenario() -> None:
        alice = peer(blocked, "alice")
        await alice.initialize()
        tools = (await alice.request("tools/list"))["result"]["tools"]
        assert [t["name"] for t in tools if t["execution"]["taskSupport"] == "forbidden"] == [
            "scans_list", "scan_status", "scan_result", "scan_cancel"
        ]
        for tool in tools:
            support = tool["execution"]["taskSupport"]
            assert support == ("optional" if tool["name"] in ("nmap", "masscan", "gobuster") else "forbidden")
            if support == "forbidden":
                refused = await alice.request("tools/call", {"name": tool["name"], "arguments": {}, "task": {}})
                assert error_of(refused)["code"] == -32601
        unknown = await alice.request("tools/call", {"name": "no-such-tool", "arguments": {}, "task": {}})
        assert error_of(unknown)["code"] == -32602

    run(scenario())


def test_a_waiting_tasks_result_holds_its_id_and_a_client_cancel_ends_it_without_a_reply(blocked) -> None:
    async def scenario() -> None:
        alice = peer(blocked, "alice")
        await alice.initialize()
        created = await alice.request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}})
        task_id = created["result"]["task"]["taskId"]
        message = {"jsonrpc": "2.0", "id": 77, "method": "tasks/result", "params": {"taskId": task_id}}
        # Tasks start in the order they are made: the first holds id 77 (and waits) before the second arrives.
        waiting = asyncio.ensure_future(alice.send(message))
        again = await asyncio.ensure_future(alice.send(dict(message)))
        assert again["id"] is None and again["error"]["code"] == -32600  # one request per id in flight
        assert not waiting.done()
        await alice.notify("notifications/cancelled", {"requestId": 77})
        assert await asyncio.wait_for(waiting, 30) is None  # cancelled: no reply at all
        assert (await alice.request("tasks/get", {"taskId": task_id}))["result"]["status"] == "working"

    run(scenario())
