"""Clients are told when the tool list changes: an operator disables a tool while it is busy, then enables it.

The official SDK client over stdio (a real `labrecon serve`), Streamable HTTP and legacy SSE, in both
protocol eras: a handshake-era client hears `notifications/tools/list_changed` outside any request, a
2026-07-28 client on its `subscriptions/listen` stream. The dispatcher's rules (who is told, the
capability, the stream's acknowledgement and end) are checked on their own below.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.subscriptions import Subscription, ToolsListChanged

from supervisor.status import ToolStatus
from tests.fakes.install import install_fake
from tests.helpers import wait_until
from tests.http_support import ARGUMENTS, MODERN, TIMEOUT, envelope, modern, request, sdk_client
from transports.cli import main
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.session import Session
from transports.ops.client import OpsClient

LABRECON = str(Path(os.sys.executable).with_name("labrecon"))
REASON = "maintenance window until 14:00"


class ListChanges:
    """The `notifications/tools/list_changed` one SDK client received, counted as they arrive."""

    def __init__(self) -> None:
        self.count = 0
        self._arrived = anyio.Event()

    def seen(self) -> None:
        self.count += 1
        self._arrived.set()
        self._arrived = anyio.Event()

    async def message_handler(self, message: Any) -> None:
        """Handshake era: what the SDK hands its `message_handler`, sent outside any stream.

        (At 2026-07-28 the SDK hands it the stream's notifications too; those are counted by `follow`.)
        """
        if isinstance(message, types.ToolListChangedNotification):
            meta = message.params.meta if message.params is not None else None
            if "io.modelcontextprotocol/subscriptionId" not in (meta or {}):
                self.seen()

    async def follow(self, subscription: Subscription) -> None:
        """2026-07-28: the events of a `subscriptions/listen` stream."""
        async for event in subscription:
            if isinstance(event, ToolsListChanged):
                self.seen()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):  # a hang guard: the wait is on the notification itself
            while self.count < count:
                await self._arrived.wait()


class Operator:
    """The operator's side, as an operator works: `labrecon` commands against the daemon at `where`."""

    def __init__(self, where: str) -> None:
        self.where = where  # http://… or unix:…

    def run(self, *argv: str) -> int:
        return main([*argv, "--url", self.where])

    def nmap(self) -> ToolStatus:
        return OpsClient(url=self.where).status().tools["nmap"]

    def wait_busy(self, running: int, queued: int) -> None:
        def busy() -> bool:
            nmap = self.nmap()
            return (nmap.in_flight, nmap.queued) == (running, queued)

        wait_until(busy, TIMEOUT, what=f"nmap running {running} call(s) with {queued} queued")


@contextlib.asynccontextmanager
async def told(client: Client, changes: ListChanges) -> Any:
    """Within: `changes` counts what `client` is told; a 2026-07-28 client listens on a stream for it."""
    async with anyio.create_task_group() as group:
        if client.protocol_version == MODERN:
            async with client.listen(tools_list_changed=True) as subscription:
                assert subscription.honored.tools_list_changed is True
                group.start_soon(changes.follow, subscription)
                yield
        else:
            yield


async def disable_while_busy(
    client: Client, changes: ListChanges, operator: Operator, release: Path, listening: Callable[[], Awaitable[None]]
) -> None:
    """nmap (one call at a time) runs a blocked call with two queued; the operator disables it, then enables it."""

    async def tool_names() -> list[str]:
        return [tool.name for tool in (await client.list_tools()).tools]

    assert "nmap" in await tool_names()
    results: dict[int, types.CallToolResult] = {}
    done = {number: anyio.Event() for number in range(3)}

    async def call(number: int) -> None:
        results[number] = await client.call_tool("nmap", ARGUMENTS["nmap"])
        done[number].set()

    async with anyio.create_task_group() as group:
        group.start_soon(call, 0)
        await anyio.to_thread.run_sync(operator.wait_busy, 1, 0)
        group.start_soon(call, 1)
        group.start_soon(call, 2)
        await anyio.to_thread.run_sync(operator.wait_busy, 1, 2)
        await listening()

        assert await anyio.to_thread.run_sync(operator.run, "tools", "disable", "nmap", "--reason", REASON) == 0
        await changes.wait_for(1)
        assert "nmap" not in await tool_names()
        with anyio.fail_after(TIMEOUT):
            await done[1].wait()
            await done[2].wait()
        for number in (1, 2):
            refused = results[number]
            assert refused.is_error
            assert refused.structured_content["error"]["error_type"] == "tool_disabled"
            assert REASON in refused.structured_content["error"]["message"]
        assert not done[0].is_set()  # the running call is not cut short
        assert (await anyio.to_thread.run_sync(operator.nmap)).state == "disabled"

        await anyio.Path(release).touch()
        with anyio.fail_after(TIMEOUT):
            await done[0].wait()
        assert not results[0].is_error, results[0]

    assert await anyio.to_thread.run_sync(operator.run, "tools", "enable", "nmap") == 0
    await changes.wait_for(2)
    assert "nmap" in await tool_names()
    again = await client.call_tool("nmap", ARGUMENTS["nmap"])
    assert not again.is_error, again
    assert changes.count == 2


def blocking_nmap(directory: Path) -> tuple[dict[str, Any], Path]:
    """nmap runs one call at a time, each blocked until the returned file exists."""
    release = directory / "release"
    return {"concurrency": 1, "scenario": {"mode": "block", "release_file": str(release)}}, release


async def nothing() -> None:
    return None


# --- stdio --------------------------------------------------------------------------------------


def write_config(directory: Path, release: Path) -> Path:
    lines = ["[policy]", "dns = false", "[tools.nmap]", "concurrency = 1"]
    lines.append(f'binary = "{install_fake(directory / "bin", "nmap", mode="block", release_file=str(release))}"')
    for tool in ("masscan", "gobuster"):
        lines += [f"[tools.{tool}]", f'binary = "{install_fake(directory / "bin", tool)}"']
    path = directory / "labrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_stdio_client_is_told_when_an_operator_disables_a_busy_tool_and_enables_it(tmp_path, mode):
    release, ops = tmp_path / "release", tmp_path / "ops.sock"
    server = StdioServerParameters(
        command=LABRECON,
        args=["serve", "--config", str(write_config(tmp_path, release)), "--ops-socket", str(ops), "--grace", "1"],
        env={"PATH": os.environ["PATH"], "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]},
    )

    async def scenario() -> None:
        changes = ListChanges()
        client = Client(server, mode=mode, read_timeout_seconds=TIMEOUT, message_handler=changes.message_handler)
        async with client:
            assert client.protocol_version == (MODERN if mode == "auto" else "2025-11-25")
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.tools.list_changed is True
            async with told(client, changes):
                await disable_while_busy(client, changes, Operator(f"unix:{ops}"), release, nothing)

    asyncio.run(scenario())


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["legacy", "auto"])
def test_a_streamable_http_client_is_told_when_an_operator_disables_a_busy_tool_and_enables_it(
    tmp_path, served, kind
):
    nmap, release = blocking_nmap(tmp_path)
    _, daemon = served(tools={"nmap": nmap})

    async def standalone_stream_open() -> None:
        # A handshake-era session hears of changes on its standalone GET stream, which the SDK opens by itself.
        await anyio.to_thread.run_sync(lambda: wait_until(daemon.mcp.sessions.listening, TIMEOUT, what="its stream"))

    async def scenario() -> None:
        changes = ListChanges()
        async with sdk_client(kind, daemon.url, message_handler=changes.message_handler) as client:
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.tools.list_changed is True
            async with told(client, changes):
                listening = standalone_stream_open if kind == "legacy" else nothing
                await disable_while_busy(client, changes, Operator(daemon.url), release, listening)

    asyncio.run(scenario())


def test_a_legacy_sse_session_is_told_too(served):
    _, daemon = served()

    async def scenario() -> None:
        changes = ListChanges()
        async with sdk_client("sse", daemon.url, message_handler=changes.message_handler) as client:
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.tools.list_changed is True
            async with httpx.AsyncClient(base_url=daemon.url, timeout=TIMEOUT) as ops:
                disabled = await ops.post("/tools/gobuster/disable", json={"reason": REASON})
                assert disabled.status_code == 200, disabled.text
                await changes.wait_for(1)
                assert "gobuster" not in [tool.name for tool in (await client.list_tools()).tools]
                refused = await client.call_tool("gobuster", ARGUMENTS["gobuster"])
                assert refused.structured_content["error"]["error_type"] == "tool_disabled"
                assert (await ops.post("/tools/gobuster/enable")).status_code == 200
                await changes.wait_for(2)
                assert "gobuster" in [tool.name for tool in (await client.list_tools()).tools]

    asyncio.run(scenario())


def test_a_listen_stream_asked_for_as_json_only_is_refused_at_once(served):
    _, daemon = served()
    body, headers = modern("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    json_only = {**headers, "accept": "application/json"}
    answer = httpx.post(daemon.url + "/mcp", json=body, headers=json_only, timeout=TIMEOUT)
    assert answer.status_code == 406 and "text/event-stream" in answer.text


# --- the dispatcher's rules ----------------------------------------------------------------------


def handshake(request_id: int = 0) -> dict[str, Any]:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    return request("initialize", params, request_id)


@pytest.fixture
def dispatcher(make_runtime):
    return McpDispatcher.for_backend(make_runtime())


def test_an_unknown_tool_is_told_every_tool_the_list_shows(dispatcher):
    async def scenario() -> None:
        session = Session()
        await dispatcher.handle(session, handshake(), print)
        listing = await dispatcher.handle(session, request("tools/list", {}, 1), print)
        listed = [tool["name"] for tool in listing["result"]["tools"]]
        answer = await dispatcher.handle(session, request("tools/call", {"name": "nessus", "arguments": {}}, 2), print)
        assert answer["error"]["code"] == -32602
        assert answer["error"]["data"]["available"] == listed and "scans_list" in listed

    asyncio.run(scenario())


def test_a_runtime_says_its_tool_list_can_change_in_both_eras_and_keeps_its_cache_hints(dispatcher):
    async def scenario() -> None:
        answer = await dispatcher.handle(Session(), handshake(), print)
        assert answer["result"]["capabilities"]["tools"] == {"listChanged": True}
        discover = await dispatcher.handle(Session(), request("server/discover", {"_meta": envelope()}), print)
        assert discover["result"]["capabilities"]["tools"] == {"listChanged": True}
        listing = await dispatcher.handle(Session(), request("tools/list", {"_meta": envelope()}), print)
        assert listing["result"]["ttlMs"] > 0 and listing["result"]["cacheScope"] in ("public", "private")

    asyncio.run(scenario())


def test_a_handshake_session_is_told_only_once_initialized_and_only_where_it_listens(dispatcher):
    async def scenario() -> None:
        heard: list[dict[str, Any]] = []
        session = Session()
        session.standalone = heard.append
        dispatcher.tools_changed(session)  # not even initialize yet
        await dispatcher.handle(session, handshake(), print)
        dispatcher.tools_changed(session)  # initialize answered, but the client has not said initialized
        assert heard == []
        await dispatcher.handle(session, {"jsonrpc": "2.0", "method": "notifications/initialized"}, print)
        dispatcher.tools_changed(session)
        assert heard == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]
        session.standalone = None  # a Streamable HTTP session without its GET stream: nowhere to send it
        dispatcher.tools_changed(session)
        assert len(heard) == 1

    asyncio.run(scenario())


def listen(request_id: Any, **wanted: Any) -> dict[str, Any]:
    return request("subscriptions/listen", {"_meta": envelope(), "notifications": wanted}, request_id)


def test_a_2026_client_is_told_only_on_the_streams_that_asked_and_each_stream_ends_with_a_result(dispatcher):
    async def scenario() -> None:
        session, heard = Session(), []
        session.standalone = heard.append  # never used at 2026-07-28: nothing arrives unsolicited
        tools = asyncio.create_task(dispatcher.handle(session, listen("tools", toolsListChanged=True), heard.append))
        other = asyncio.create_task(
            dispatcher.handle(session, listen(7, promptsListChanged=True, resourceSubscriptions=["x"]), heard.append)
        )
        await asyncio.sleep(0)  # both reach their first await
        acknowledged = {
            note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"]: note["params"]["notifications"]
            for note in heard
        }
        assert acknowledged == {"tools": {"toolsListChanged": True}, 7: {}}  # only what is served is honoured
        heard.clear()
        dispatcher.tools_changed(session)
        assert heard == [
            {
                "jsonrpc": "2.0",
                "method": "notifications/tools/list_changed",
                "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": "tools"}},
            }
        ]
        assert dispatcher.end_subscriptions(session) == 2  # as a transport does when it shuts down
        for task, request_id in ((tools, "tools"), (other, 7)):
            answer = await asyncio.wait_for(task, TIMEOUT)
            assert answer["id"] == request_id and answer["result"]["resultType"] == "complete"
            assert answer["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == request_id
        assert session.subscriptions == {} and session.calls == {}

    asyncio.run(scenario())


def test_a_stream_the_client_cancels_gets_no_answer_and_handshake_sessions_cannot_listen(dispatcher):
    async def scenario() -> None:
        session, heard = Session(), []
        task = asyncio.create_task(dispatcher.handle(session, listen(3, toolsListChanged=True), heard.append))
        await asyncio.sleep(0)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}
        assert await dispatcher.handle(session, cancel, print) is None
        assert await asyncio.wait_for(task, TIMEOUT) is None
        assert session.subscriptions == {}

        legacy = Session()
        await dispatcher.handle(legacy, handshake(), print)
        refused = await dispatcher.handle(legacy, request("subscriptions/listen", {"notifications": {}}, 1), print)
        assert refused["error"]["code"] == -32601

    asyncio.run(scenario())
