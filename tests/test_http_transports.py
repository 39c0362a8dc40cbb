"""MCP over HTTP with the official SDK client: legacy SSE, and Streamable HTTP in both protocol eras.

Every test runs a real daemon on 127.0.0.1 (an ephemeral port) in front of
a real runtime whose tools are the fake scanners, and drives it with the
`mcp` SDK's own transports, so what passes here is what real clients see.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.fakes.install import running
from tests.helpers import process_alive, wait_until
from tests.http_support import (
    ARGUMENTS,
    CLIENT_KINDS,
    HANDLE_TOOLS,
    HANDSHAKE,
    MODERN,
    binary,
    idle,
    running_daemon,
    sdk_client,
)
from tests.runtimes import scan_calls

EXPECTED_VERSION = {"sse": HANDSHAKE, "legacy": HANDSHAKE, "auto": MODERN}
SESSION_KEY = {"sse": "sse", "legacy": "http", "auto": None}


def status_sessions(url: str) -> dict[str, int]:
    return httpx.get(url + "/status", timeout=10).json()["sessions"]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_lists_and_calls_every_tool(make_runtime, kind):
    runtime = make_runtime()
    with running_daemon(runtime) as daemon:

        async def scenario() -> None:
            async with sdk_client(kind, daemon.url) as client:
                assert client.protocol_version == EXPECTED_VERSION[kind]
                assert client.server_info is not None and client.server_info.name == "labrecon"
                listing = await client.list_tools()
                assert [tool.name for tool in listing.tools] == ["nmap", "masscan", "gobuster", *HANDLE_TOOLS]
                for tool in listing.tools[:3]:
                    assert tool.input_schema["type"] == "object" and tool.description
                    result = await client.call_tool(tool.name, ARGUMENTS[tool.name])
                    assert not result.is_error, result
                    assert result.structured_content["tool"] == tool.name
                    assert result.structured_content["ok"] is True
                sessions = await anyio.to_thread.run_sync(status_sessions, daemon.url)
                if (key := SESSION_KEY[kind]) is not None:
                    assert sessions[key] == 1

        asyncio.run(scenario())
        # Closing the client ends its session (stream closed, or DELETE): nothing is left open.
        assert wait_until(lambda: status_sessions(daemon.url) == {"sse": 0, "http": 0, "http_stateless": 0})
        assert daemon.mcp.sessions.in_progress == 0


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_progress_notifications_arrive_in_order_before_the_result(make_runtime, kind):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 1, "steps": 4}}})
    with running_daemon(runtime) as daemon:
        seen: list[tuple[float, float | None]] = []

        async def scenario() -> Any:
            async with sdk_client(kind, daemon.url) as client:

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append((progress, total))

                return await client.call_tool("nmap", ARGUMENTS["nmap"], progress_callback=on_progress)

        result = asyncio.run(scenario())
    assert not result.is_error, result
    # The process starting and ending bracket nmap's own reports.
    assert [progress for progress, _ in seen] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert all(total in (None, 100.0) for _, total in seen)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_a_short_scan_reports_its_start_and_end(make_runtime, kind):
    runtime = make_runtime()  # the fake answers at once
    with running_daemon(runtime) as daemon:
        seen: list[tuple[float, str | None]] = []

        async def scenario() -> Any:
            async with sdk_client(kind, daemon.url) as client:

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append((progress, message))

                return await client.call_tool("nmap", ARGUMENTS["nmap"], progress_callback=on_progress)

        result = asyncio.run(scenario())
    assert not result.is_error, result
    assert seen[0] == (0.0, "nmap started") and seen[-1] == (100.0, "nmap ended")


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_cancelling_a_call_kills_its_process_and_the_client_carries_on(make_runtime, kind):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "hang"}}})
    nmap = binary(runtime, "nmap")
    with running_daemon(runtime) as daemon:

        async def scenario() -> None:
            async with sdk_client(kind, daemon.url) as client:
                async with anyio.create_task_group() as group:
                    group.start_soon(client.call_tool, "nmap", ARGUMENTS["nmap"])
                    await anyio.to_thread.run_sync(lambda: wait_until(lambda: running(scan_calls(nmap))))
                    group.cancel_scope.cancel()
                pid = scan_calls(nmap)[0]["pid"]
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: not process_alive(pid), what="fake killed"))
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: idle(runtime), what="nmap idle"))
                # The same client keeps working after a cancellation.
                result = await client.call_tool("gobuster", ARGUMENTS["gobuster"])
                assert not result.is_error, result

        asyncio.run(scenario())
        assert runtime.status().tools["nmap"].calls.get("cancelled") == 1
        assert daemon.mcp.sessions.in_progress == 0


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_refused_arguments_are_error_results_and_unknown_tools_protocol_errors(make_runtime, kind):
    runtime = make_runtime()
    with running_daemon(runtime) as daemon:

        async def scenario() -> None:
            async with sdk_client(kind, daemon.url) as client:
                outside = await client.call_tool("nmap", {"target": "8.8.8.8"})
                assert outside.is_error
                assert outside.structured_content["error"]["error_type"] == "validation"
                assert outside.structured_content["error"]["recovery_suggestion"]
                flag = await client.call_tool("nmap", {"target": "10.0.0.5", "extra_args": "-iL /etc/passwd"})
                assert flag.is_error and flag.structured_content["error"]["error_type"] == "validation"
                with pytest.raises(MCPError) as raised:
                    await client.call_tool("metasploit", {"target": "10.0.0.5"})
                assert raised.value.error.code == -32602

        asyncio.run(scenario())
    assert scan_calls(binary(runtime, "nmap")) == []
