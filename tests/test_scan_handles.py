"""The handle tools and the scan resources, through the dispatcher in front of a real runtime on fake scanners.

Sessions with different owners stand for different callers: what one owns, the other must not be
able to tell apart from an id that never existed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import mcp_types as types
import pytest
from jsonschema import Draft202012Validator
from mcp_types import methods as mcp_methods

from actors.api import Caller
from actors.results import CallOutcome, ErrorType
from supervisor.runtime import Runtime
from supervisor.scans.views import PAGE_SCHEMA
from tests.fakes.install import running
from tests.helpers import process_alive, wait_until
from tests.http_support import binary
from tests.runtimes import scan_calls
from tests.test_mcp_dispatcher import Peer, envelope, error_of
from transports.mcp.eras import Era
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import Session
from transports.mcp.tool_results import call_tool_result

HANDLE_TOOLS = ["scans_list", "scan_status", "scan_result", "scan_cancel"]
UNKNOWN = "0" * 32


def peer(runtime: Runtime, owner: str | None = None, version: str | None = "2025-11-25") -> Peer:
    """A client of `runtime` as `owner`, already past the handshake at `version` (None: 2026-07-28)."""
    session = Session.handshake(version) if version is not None else Session.modern()
    session.owner = owner
    return Peer(runtime, session=session, scans=ScanAccess.of(runtime))  # type: ignore[arg-type]


async def call(client: Peer, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    modern = Era.HANDSHAKE not in client.session.allowed_eras
    params = {"name": name, "arguments": arguments, **(envelope() if modern else {})}
    reply = await client.request("tools/call", params)
    assert "result" in reply, reply
    return reply["result"]


async def scan(client: Peer, arguments: dict[str, Any] | None = None) -> str:
    result = await call(client, "nmap", arguments or {"target": "10.0.0.5"})
    return result["structuredContent"]["scan_id"]


def masked(answer: dict[str, Any], *values: str) -> str:
    """An answer as text with the ids that differ between two calls replaced."""
    text = json.dumps(answer, sort_keys=True)
    for value in values:
        text = text.replace(value, "<id>")
    return text


def call_id(result: dict[str, Any]) -> str:
    return error_envelope(result)["call_id"]


def error_envelope(result: dict[str, Any]) -> dict[str, Any]:
    """A handle tool's error answer carries its envelope as JSON text only (its output schema is for results)."""
    assert "structuredContent" not in result, "an error answer must not claim the tool's output schema"
    return json.loads(result["content"][1]["text"])


# ---------------------------------------------------------------- listing


@pytest.mark.parametrize("version", ["2025-11-25", None])
def test_handle_tools_are_listed_after_the_scanner_tools_and_resources_are_a_capability(make_runtime, version):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime, version=version)

    async def scenario() -> None:
        params = envelope() if version is None else {}
        tools = (await client.request("tools/list", params))["result"]["tools"]
        assert [tool["name"] for tool in tools] == ["nmap", "masscan", "gobuster", *HANDLE_TOOLS]
        for tool in tools[3:]:
            Draft202012Validator.check_schema(tool["inputSchema"])
            Draft202012Validator.check_schema(tool["outputSchema"])
            assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
        if version is None:
            capabilities = (await client.request("server/discover", envelope()))["result"]["capabilities"]
        else:
            fresh = Peer(runtime, scans=ScanAccess.of(runtime))
            capabilities = (await fresh.initialize(version))["result"]["capabilities"]
        assert capabilities["resources"] == {}

    asyncio.run(scenario())


def test_scanner_tools_state_their_scope_and_the_scope_is_a_resource(make_runtime):
    runtime = make_runtime(
        scans={"path": ":memory:"},
        policy={"allowed_networks": ["10.1.0.0/16", "192.168.7.0/24"], "allowed_domains": ["lab.internal"],
                "max_hosts": 64},
    )
    client = peer(runtime)

    async def scenario() -> None:
        tools = (await client.request("tools/list"))["result"]["tools"]
        for tool in tools[:3]:
            assert "10.1.0.0/16 or 192.168.7.0/24" in tool["description"]
            assert "under lab.internal" in tool["description"] and "at most 64 hosts" in tool["description"]
        listed = (await client.request("resources/list"))["result"]["resources"]
        assert listed[0]["uri"] == "labrecon://scope"
        read = (await client.request("resources/read", {"uri": "labrecon://scope"}))["result"]["contents"]
        scope = json.loads(read[0]["text"])
        assert read[0]["mimeType"] == "application/json"
        assert scope["allowed_networks"] == ["10.1.0.0/16", "192.168.7.0/24"]
        assert scope["allowed_domains"] == ["lab.internal"] and scope["max_hosts_per_call"] == 64

    asyncio.run(scenario())


def test_without_a_scan_store_there_are_neither_handle_tools_nor_resources():
    client = Peer()

    async def scenario() -> None:
        capabilities = (await client.initialize())["result"]["capabilities"]
        assert "resources" not in capabilities
        tools = (await client.request("tools/list"))["result"]["tools"]
        assert not {tool["name"] for tool in tools} & set(HANDLE_TOOLS)
        assert error_of(await client.request("resources/list"))["code"] == types.METHOD_NOT_FOUND

    asyncio.run(scenario())


# ---------------------------------------------------------------- owners


def test_another_owners_scan_answers_exactly_like_an_unknown_id(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"}, tools={"nmap": {"scenario": {"mode": "hang"}}})
    alice, bob = peer(runtime, "alice"), peer(runtime, "bob")

    async def scenario() -> None:
        await scan(alice, {"target": "10.0.0.9", "wait_sec": 0})  # running, so a cancel would have work to do
        theirs = await scan(alice, {"target": "10.0.0.5", "wait_sec": 0})
        for name in ("scan_status", "scan_result", "scan_cancel"):
            foreign = await call(bob, name, {"scan_id": theirs})
            unknown = await call(bob, name, {"scan_id": UNKNOWN})
            assert foreign["isError"] and error_envelope(foreign)["error"]["error_type"] == "not_found"
            assert "scans_list" in error_envelope(foreign)["error"]["recovery_suggestion"]
            assert masked(foreign, theirs, call_id(foreign)) == masked(unknown, UNKNOWN, call_id(unknown))
        for suffix in ("", "/raw"):
            foreign = error_of(await bob.request("resources/read", {"uri": f"labrecon://scans/{theirs}{suffix}"}))
            unknown = error_of(await bob.request("resources/read", {"uri": f"labrecon://scans/{UNKNOWN}{suffix}"}))
            assert foreign["code"] == unknown["code"] == -32002 and foreign["message"] == "Resource not found"
            assert masked(foreign, theirs) == masked(unknown, UNKNOWN)
        assert (await call(bob, "scans_list", {}))["structuredContent"]["scans"] == []
        assert [r["uri"] for r in (await bob.request("resources/list"))["result"]["resources"]] == ["labrecon://scope"]
        # Bob's cancel changed nothing: the scan is still Alice's, and still running.
        mine = await call(alice, "scan_status", {"scan_id": theirs})
        assert mine["structuredContent"]["status"] == "working"
        assert len((await call(alice, "scans_list", {}))["structuredContent"]["scans"]) == 2

    asyncio.run(scenario())


# ---------------------------------------------------------------- reading results


def test_paging_through_scan_result_returns_every_port_exactly_once(make_runtime):
    hosts = [f"10.0.0.{n}" for n in range(1, 65)]
    ports = list(range(1000, 1020))
    runtime = make_runtime(
        scans={"path": ":memory:", "max_result_chars": 5000},
        tools={"nmap": {"scenario": {"up_hosts": hosts, "ports": ports}}},
    )
    client = peer(runtime)

    async def scenario() -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any]]:
        whole = await call(client, "nmap", {"target": "10.0.0.0/25", "ports": "1000-1019"})
        scan_id = whole["structuredContent"]["scan_id"]
        seen: list[tuple[str, int]] = []
        offset: int | None = 0
        pages = 0
        while offset is not None:
            page = await call(client, "scan_result", {"scan_id": scan_id, "state": "open", "offset": offset})
            assert not page["isError"], page
            assert sum(len(block["text"]) for block in page["content"]) <= 5000
            Draft202012Validator(PAGE_SCHEMA).validate(page["structuredContent"])
            seen += [(row["host"], row["port"]) for row in page["structuredContent"]["rows"]]
            offset = page["structuredContent"]["next_offset"]
            pages += 1
        assert pages > 1
        summary = await call(client, "scan_result", {"scan_id": scan_id})
        return seen, summary, whole

    seen, summary, whole = asyncio.run(scenario())
    assert len(seen) == len(set(seen)) == len(hosts) * len(ports)
    assert set(seen) == {(host, port) for host in hosts for port in ports}
    assert sum(len(block["text"]) for block in summary["content"]) <= 5000
    assert summary["structuredContent"]["counts"]["open_ports"] == len(hosts) * len(ports)
    # The call's own answer would not fit either: it carries the summary, says so, and links the whole.
    structured = whole["structuredContent"]
    assert structured["result"] is None and structured["summary"]["counts"]["open_ports"] == 1280
    assert "carries its summary" in whole["content"][0]["text"]
    assert f"labrecon://scans/{structured['scan_id']}" in structured["next_step"]


@pytest.mark.parametrize(("version", "linked"), [("2025-03-26", False), ("2025-06-18", True), (None, True)])
def test_a_completed_answer_links_its_scan_from_2025_06_18_on(make_runtime, version, linked):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime, version=version)

    async def scenario() -> dict[str, Any]:
        return await call(client, "nmap", {"target": "10.0.0.5"})

    result = asyncio.run(scenario())
    links = [block for block in result["content"] if block["type"] == "resource_link"]
    if not linked:
        assert links == []
        return
    scan_id = result["structuredContent"]["scan_id"]
    assert [link["uri"] for link in links] == [f"labrecon://scans/{scan_id}"]
    assert links[0]["mimeType"] == "application/json"


def test_a_result_cut_at_the_byte_cap_says_so(make_runtime):
    runtime = make_runtime(
        scans={"path": ":memory:"},
        tools={"nmap": {"stdout_cap_bytes": 4096, "scenario": {"up_hosts": [f"10.0.0.{n}" for n in range(1, 200)]}}},
    )
    client = peer(runtime)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        answer = await call(client, "nmap", {"target": "10.0.0.0/24"})
        summary = await call(client, "scan_result", {"scan_id": answer["structuredContent"]["scan_id"]})
        return answer, summary

    answer, summary = asyncio.run(scenario())
    assert answer["structuredContent"]["stdout_truncated"] is True
    assert "truncated" in answer["content"][0]["text"]
    assert summary["structuredContent"]["truncated_output"] is True
    assert "byte cap" in summary["content"][0]["text"]


def test_resources_read_the_whole_outcome_and_the_raw_output(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime, version=None)

    async def scenario() -> None:
        scan_id = await scan(client, {"target": "10.0.0.5", "ports": "22,80"})
        templates = (await client.request("resources/templates/list", envelope()))["result"]["resourceTemplates"]
        assert [t["uriTemplate"] for t in templates] == ["labrecon://scans/{scan_id}", "labrecon://scans/{scan_id}/raw"]
        listed = (await client.request("resources/list", envelope()))["result"]["resources"]
        assert [r["uri"] for r in listed] == ["labrecon://scope", f"labrecon://scans/{scan_id}"]
        read = await client.request("resources/read", {"uri": f"labrecon://scans/{scan_id}", **envelope()})
        (contents,) = read["result"]["contents"]
        whole = json.loads(contents["text"])
        assert contents["mimeType"] == "application/json" and whole["scan_id"] == scan_id
        assert [p["port"] for p in whole["result"]["hosts"][0]["ports"]] == [22, 80]
        raw = await client.request("resources/read", {"uri": f"labrecon://scans/{scan_id}/raw", **envelope()})
        (contents,) = raw["result"]["contents"]
        assert contents["mimeType"] == "application/xml" and contents["text"].startswith("<?xml")
        for uri in (f"labrecon://scans/{UNKNOWN}", "labrecon://elsewhere", f"labrecon://scans/{scan_id}/x"):
            error = error_of(await client.request("resources/read", {"uri": uri, **envelope()}))
            # 2026-07-28 retired -32002: a missing resource is invalid params there.
            assert error == {"code": types.INVALID_PARAMS, "message": "Resource not found", "data": {"uri": uri}}

    asyncio.run(scenario())


def test_a_running_scan_reads_as_where_it_stands_has_no_raw_output_yet_and_scan_result_says_to_wait(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"}, tools={"nmap": {"scenario": {"mode": "hang"}}})
    client = peer(runtime)

    async def scenario() -> None:
        scan_id = await scan(client, {"target": "10.0.0.5", "wait_sec": 0})
        read = await client.request("resources/read", {"uri": f"labrecon://scans/{scan_id}"})
        (contents,) = read["result"]["contents"]
        assert json.loads(contents["text"])["status"] == "working"
        raw = await client.request("resources/read", {"uri": f"labrecon://scans/{scan_id}/raw"})
        assert error_of(raw)["code"] == -32002
        result = await call(client, "scan_result", {"scan_id": scan_id})
        assert not result["isError"] and result["structuredContent"]["status"] == "working"
        assert "scan_status" in result["structuredContent"]["next_step"]
        await call(client, "scan_cancel", {"scan_id": scan_id})

    asyncio.run(scenario())


def test_bad_arguments_answer_like_a_scanner_tools_validation_error(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime)
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("scan_status", {"scan_id": 7}, "scan_id"),
        ("scan_status", {"scan_id": "x", "wait_sec": -1}, "wait_sec"),
        ("scan_result", {"scan_id": "x", "limit": 0}, "limit"),
        ("scan_result", {"scan_id": "x", "colour": "red"}, "colour"),
        ("scans_list", {"status": "sleeping"}, "status"),
        ("scans_list", {"cursor": "not-a-cursor"}, "cursor"),
        ("scan_cancel", {}, "scan_id"),
    ]

    async def scenario() -> None:
        scanner = await call(client, "nmap", {"target": "10.0.0.5", "ports": True})
        assert scanner["isError"]
        for name, arguments, named in refusals:
            refused = await call(client, name, arguments)
            assert refused["isError"], (name, arguments)
            error = error_envelope(refused)["error"]
            assert error["error_type"] == "validation" and named in error["message"], error
            assert error["recovery_suggestion"] == scanner["structuredContent"]["error"]["recovery_suggestion"]
            assert set(error_envelope(refused)) <= set(scanner["structuredContent"])

    asyncio.run(scenario())


def test_scans_list_pages_newest_first_and_filters(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime)

    async def scenario() -> None:
        ids = [await scan(client, {"target": f"10.0.0.{n}"}) for n in range(1, 6)]
        await call(client, "masscan", {"target": "10.0.0.0/30", "ports": "80"})
        seen: list[str] = []
        cursor = None
        while True:
            more: dict[str, Any] = {"cursor": cursor} if cursor else {}
            page = await call(client, "scans_list", {"tool": "nmap", "limit": 2, **more})
            seen += [item["scan_id"] for item in page["structuredContent"]["scans"]]
            cursor = page["structuredContent"]["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]
        done = await call(client, "scans_list", {"status": "completed"})
        assert len(done["structuredContent"]["scans"]) == 6

    asyncio.run(scenario())


# ---------------------------------------------------------------- waiting and cancelling


def test_notifications_cancelled_while_the_call_waits_cancels_the_scan(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"}, tools={"nmap": {"scenario": {"mode": "hang"}}})
    nmap = binary(runtime, "nmap")
    client = peer(runtime)

    async def scenario() -> None:
        waiting = client.start("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}}, id="scan")
        await asyncio.to_thread(wait_until, lambda: running(scan_calls(nmap)), what="the fake running")
        await client.notify("notifications/cancelled", {"requestId": "scan"})
        assert await waiting is None  # the client said it will not read the answer
        (listed,) = (await call(client, "scans_list", {}))["structuredContent"]["scans"]
        assert listed["status"] == "cancelled"

    asyncio.run(scenario())
    pid = scan_calls(nmap)[0]["pid"]
    wait_until(lambda: not process_alive(pid), what="the fake killed")


def test_after_answering_working_a_cancellation_no_longer_reaches_the_scan(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"}, tools={"nmap": {"scenario": {"mode": "hang"}}})
    nmap = binary(runtime, "nmap")
    client = peer(runtime)

    async def scenario() -> None:
        answer = await client.request(
            "tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5", "wait_sec": 0}}, id="scan"
        )
        scan_id = answer["result"]["structuredContent"]["scan_id"]
        assert answer["result"]["structuredContent"]["status"] == "working"
        await client.notify("notifications/cancelled", {"requestId": "scan"})
        status = await call(client, "scan_status", {"scan_id": scan_id})
        assert status["structuredContent"]["status"] == "working"
        await asyncio.to_thread(wait_until, lambda: running(scan_calls(nmap)), what="the fake running")
        cancelled = await call(client, "scan_cancel", {"scan_id": scan_id})
        assert cancelled["structuredContent"]["status"] == "cancelled"

    asyncio.run(scenario())
    assert not process_alive(scan_calls(nmap)[0]["pid"])  # scan_cancel answers once the group is gone


def test_a_client_that_stops_waiting_on_scan_status_leaves_the_scan_running(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:"}, tools={"nmap": {"scenario": {"mode": "hang"}}})
    client = peer(runtime)

    async def scenario() -> None:
        scan_id = await scan(client, {"target": "10.0.0.5", "wait_sec": 0})
        waiting = client.start("tools/call", {"name": "scan_status", "arguments": {"scan_id": scan_id, "wait_sec": 60}},
                               id="wait")
        await asyncio.to_thread(wait_until, lambda: "wait" in str(list(client.session.calls)), what="waiting")
        await client.notify("notifications/cancelled", {"requestId": "wait"})
        assert await waiting is None
        assert client.session.in_flight == 0
        status = await call(client, "scan_status", {"scan_id": scan_id})
        assert status["structuredContent"]["status"] == "working"
        await call(client, "scan_cancel", {"scan_id": scan_id})

    asyncio.run(scenario())


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", None])
def test_every_answer_fits_its_protocol_versions_schema(make_runtime, version):
    runtime = make_runtime(scans={"path": ":memory:"})
    client = peer(runtime, version=version)
    at = version or "2026-07-28"

    async def scenario() -> None:
        answer = await call(client, "nmap", {"target": "10.0.0.5"})
        scan_id = answer["structuredContent"]["scan_id"] if "structuredContent" in answer else None
        scan_id = scan_id or json.loads(answer["content"][1]["text"])["scan_id"]
        answers = [answer]
        for name, arguments in [
            ("scans_list", {}), ("scan_status", {"scan_id": scan_id}), ("scan_result", {"scan_id": scan_id}),
            ("scan_result", {"scan_id": scan_id, "ports": [22]}), ("scan_cancel", {"scan_id": scan_id}),
            ("scan_status", {"scan_id": UNKNOWN}), ("scan_status", {}),
        ]:
            answers.append(await call(client, name, arguments))
        for result in answers:
            mcp_methods.serialize_server_result("tools/call", at, result)
            # Results carry structuredContent where the version has it; error answers of the handle tools never.
            handle_error = result["isError"] and result is not answer
            assert ("structuredContent" in result) == (at >= "2025-06-18" and not handle_error)

    asyncio.run(scenario())


def test_scans_list_stays_within_max_result_chars_and_its_pages_hold_every_scan_once(make_runtime):
    runtime = make_runtime(scans={"path": ":memory:", "max_result_chars": 5000})
    refused = [runtime.call("nmap", {"target": f"203.0.113.{n}", "extra_args": "-x" * 100}) for n in range(60)]
    assert not any(outcome.ok for outcome in refused)
    client = peer(runtime)

    async def scenario() -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            answer = await call(client, "scans_list", {"limit": 100, **({"cursor": cursor} if cursor else {})})
            text = "".join(part["text"] for part in answer["content"])
            assert len(text) + len(json.dumps(answer["structuredContent"], separators=(",", ":"))) <= 5000
            seen += [scan["scan_id"] for scan in answer["structuredContent"]["scans"]]
            cursor = answer["structuredContent"]["next_cursor"]
            if cursor is None:
                return seen

    seen = asyncio.run(scenario())
    stored, _ = runtime.scans.page(Caller.local(), limit=100)
    assert seen == [scan.scan_id for scan in stored] and len(seen) == 60


def test_a_failed_scans_partial_result_too_long_for_an_answer_comes_as_its_summary():
    hosts = [
        {"address": f"10.0.{n // 250}.{n % 250}", "status": "up",
         "ports": [{"port": p, "protocol": "tcp", "state": "open", "service": "http"} for p in range(1, 21)]}
        for n in range(300)
    ]
    outcome = CallOutcome.failure(
        "nmap", "c1", ErrorType.TIMEOUT, "nmap did not finish", target="10.0.0.0/16", result={"hosts": hosts}
    )
    answer = call_tool_result(outcome, scan_id="a" * 32, max_chars=20_000, resource_links=True)
    structured = answer["structuredContent"]
    assert answer["isError"] and structured["result"] is None and structured["summary"]["counts"]["open_ports"] == 6000
    assert sum(len(part.get("text", "")) for part in answer["content"]) < 2 * 20_000
    assert answer["content"][-1]["uri"] == f"labrecon://scans/{'a' * 32}"


def test_scan_cancel_of_a_scan_another_daemon_runs_says_where_it_runs_and_stops_nothing(make_runtime, tmp_path):
    shared = {"path": str(tmp_path / "scans.sqlite3"), "inline_wait_sec": 0}
    runner = make_runtime(scans=shared, tools={"nmap": {"scenario": {"mode": "hang"}}})
    other = make_runtime(scans=shared)

    async def scenario() -> None:
        scan_id = await scan(peer(runner), {"target": "10.0.0.5"})
        wait_until(lambda: scan_calls(binary(runner, "nmap")), what="the scan's process")
        answer = await call(peer(other), "scan_cancel", {"scan_id": scan_id})
        assert not answer["isError"] and answer["structuredContent"]["status"] == "working"
        assert "Another labrecon process" in answer["structuredContent"]["next_step"]
        assert runner.scans.get(Caller.local(), scan_id).status.value == "working"  # nothing was stopped
        await call(peer(runner), "scan_cancel", {"scan_id": scan_id})

    asyncio.run(scenario())
