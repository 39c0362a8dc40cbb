"""The MCP dispatcher, driven directly with decoded messages and an in-memory backend."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import mcp_types as types
import pytest
from mcp_types import methods as mcp_methods

from actors.api import ProgressSink, ToolInfo, UnknownTool
from actors.results import CallOutcome, ErrorType
from tests.backends import TOOLS, FakeBackend
from transports.framing import LineFramer, Oversized
from transports.mcp import jsonrpc
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.eras import Era
from transports.mcp.session import Session
from transports.mcp.tool_results import summarize

HANDSHAKE = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN = "2026-07-28"


def envelope(version: str = MODERN, **extra: Any) -> dict[str, Any]:
    return {
        "_meta": {
            types.PROTOCOL_VERSION_META_KEY: version,
            types.CLIENT_CAPABILITIES_META_KEY: {},
            types.CLIENT_INFO_META_KEY: {"name": "tests", "version": "1"},
            **extra,
        }
    }


class Peer:
    """A client talking to the dispatcher in memory; notifications are collected in order."""

    def __init__(
        self, backend: FakeBackend | None = None, session: Session | None = None, **options: Any
    ) -> None:
        self.backend = backend or FakeBackend()
        counter = itertools.count(1)
        self.dispatcher = McpDispatcher(self.backend, new_call_id=lambda: f"call-{next(counter)}", **options)
        self.session = session or Session()
        self.notes: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._watch: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Event]] = []

    def _notify(self, message: dict[str, Any]) -> None:
        types.jsonrpc_message_adapter.validate_python(message)
        self.notes.append(message)
        for predicate, event in self._watch:
            if predicate(message):
                event.set()

    async def send(self, message: Any) -> Any:
        reply = await self.dispatcher.handle(self.session, message, self._notify)
        _check_envelopes(reply)
        return reply

    async def text(self, raw: str | bytes) -> Any:
        reply = await self.dispatcher.handle_text(self.session, raw, self._notify)
        _check_envelopes(reply)
        return reply

    async def request(self, method: str, params: dict[str, Any] | None = None, *, id: Any = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids) if id is None else id, "method": method}
        if params is not None:
            message["params"] = params
        reply = await self.send(message)
        assert reply is not None and reply["id"] == message["id"]
        return reply

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        assert await self.send(message) is None

    async def initialize(self, version: str = "2025-11-25") -> dict[str, Any]:
        reply = await self.request(
            "initialize",
            {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}},
        )
        await self.notify("notifications/initialized")
        return reply

    def start(self, method: str, params: dict[str, Any], *, id: Any) -> asyncio.Task[Any]:
        message = {"jsonrpc": "2.0", "id": id, "method": method, "params": params}
        return asyncio.create_task(self.send(message))

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for a notification matching `predicate` (already received ones count)."""
        for note in self.notes:
            if predicate(note):
                return note
        event = asyncio.Event()
        self._watch.append((predicate, event))
        await asyncio.wait_for(event.wait(), timeout=10)
        return next(note for note in reversed(self.notes) if predicate(note))


def _check_envelopes(reply: Any) -> None:
    for message in reply if isinstance(reply, list) else [reply] if reply is not None else []:
        types.jsonrpc_message_adapter.validate_python(message)
        assert json.loads(jsonrpc.encode(message)) == message


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert "error" in reply, reply
    return reply["error"]


def progress_of(note: dict[str, Any]) -> bool:
    return note["method"] == "notifications/progress"


# ---------------------------------------------------------------- handshake era


@pytest.mark.parametrize("version", HANDSHAKE)
def test_initialize_echoes_each_handshake_version(version: str) -> None:
    async def scenario() -> None:
        peer = Peer()
        result = (await peer.initialize(version))["result"]
        mcp_methods.parse_server_result("initialize", version, result)
        assert result["protocolVersion"] == version
        assert result["serverInfo"]["name"] == "labrecon"
        assert result["capabilities"] == {"tools": {"listChanged": False}, "logging": {}}
        assert "lab" in result["instructions"]
        assert peer.session.era is Era.HANDSHAKE and peer.session.initialized

    run(scenario())


@pytest.mark.parametrize("requested", ["1999-01-01", MODERN, "latest"])
def test_initialize_offers_the_newest_handshake_version_otherwise(requested: str) -> None:
    async def scenario() -> None:
        result = (await Peer().initialize(requested))["result"]
        assert result["protocolVersion"] == "2025-11-25"

    run(scenario())


def test_second_initialize_is_an_invalid_request() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        reply = await peer.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}},
        )
        assert error_of(reply)["code"] == -32600
        assert peer.session.protocol_version == "2025-11-25"

    run(scenario())


def test_malformed_initialize_is_invalid_params_and_leaves_the_session_open() -> None:
    async def scenario() -> None:
        peer = Peer()
        reply = await peer.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        error = error_of(reply)
        assert error["code"] == -32602 and "clientInfo" in error["message"]
        assert peer.session.era is None
        assert "result" in await peer.initialize()

    run(scenario())


def test_requests_before_initialize_are_refused_but_ping_is_answered() -> None:
    async def scenario() -> None:
        peer = Peer()
        assert (await peer.request("ping"))["result"] == {}
        assert error_of(await peer.request("tools/list"))["code"] == -32600
        assert error_of(await peer.request("tools/call", {"name": "probe", "arguments": {"target": "x"}}))[
            "code"
        ] == -32600
        assert peer.backend.calls == []

    run(scenario())


@pytest.mark.parametrize("method", ["no/such/method", "prompts/list", "resources/read", "completion/complete", ""])
def test_unserved_methods_are_method_not_found_at_once(method: str) -> None:
    async def scenario() -> None:
        for prepare in ("fresh", "initialized", "modern"):
            peer = Peer()
            if prepare == "initialized":
                await peer.initialize()
            elif prepare == "modern":
                await peer.request("server/discover", envelope())
            reply = await peer.send({"jsonrpc": "2.0", "id": 9, "method": method, "params": {"whatever": [1]}})
            assert error_of(reply)["code"] == (-32600 if method == "" else -32601)
            assert reply["id"] == 9

    run(scenario())


def test_notifications_are_never_answered() -> None:
    async def scenario() -> None:
        peer = Peer()
        for message in (
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "method": "no/such/notification", "params": {"x": 1}},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": True}},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": [1, 2]},
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 2}},
        ):
            assert await peer.send(message) is None
        assert not peer.session.initialized  # initialized before initialize means nothing

    run(scenario())


def test_log_messages_follow_set_level() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        await peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}})
        assert [n for n in peer.notes if n["method"] == "notifications/message"] == []
        assert (await peer.request("logging/setLevel", {"level": "info"}))["result"] == {}
        await peer.request("tools/call", {"name": "broken", "arguments": {"target": "10.0.0.5"}})
        messages = [n["params"] for n in peer.notes if n["method"] == "notifications/message"]
        assert [(m["level"], m["data"]["event"]) for m in messages] == [("warning", "call_finished")]
        assert messages[0]["data"]["error_type"] == "execution"
        bad = await peer.request("logging/setLevel", {"level": "loud"})
        assert error_of(bad)["code"] == -32602
        assert peer.session.log_level == "info"

    run(scenario())


def test_tools_list_describes_every_tool() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        result = (await peer.request("tools/list"))["result"]
        mcp_methods.parse_server_result("tools/list", "2025-11-25", result)
        assert [tool["name"] for tool in result["tools"]] == list(TOOLS)
        for tool in result["tools"]:
            info = TOOLS[tool["name"]]
            assert tool["title"] == info.title
            assert tool["description"] == info.description
            assert tool["inputSchema"] == info.input_schema and tool["inputSchema"]["type"] == "object"
            assert tool["outputSchema"] == info.output_schema
            assert tool["annotations"] == {
                "readOnlyHint": True,
                "destructiveHint": False,
                "idempotentHint": True,
                "openWorldHint": True,
            }
        assert not {"ttlMs", "cacheScope", "resultType", "_meta"} & set(result)

    run(scenario())


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        ("2024-11-05", set(), {"annotations", "title", "outputSchema"}),
        ("2025-03-26", {"annotations"}, {"title", "outputSchema"}),
        ("2025-06-18", {"annotations", "title", "outputSchema"}, set()),
    ],
)
def test_tool_fields_follow_the_negotiated_version(version: str, present: set[str], absent: set[str]) -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize(version)
        tool = (await peer.request("tools/list"))["result"]["tools"][0]
        assert present <= set(tool) and not absent & set(tool)
        call = (await peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}}))["result"]
        assert ("structuredContent" in call) == ("outputSchema" in present)
        assert json.loads(call["content"][1]["text"])["ok"] is True

    run(scenario())


def test_tools_list_has_a_single_page() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        assert error_of(await peer.request("tools/list", {"cursor": "next"}))["code"] == -32602

    run(scenario())


# ---------------------------------------------------------------- tools/call


def test_successful_call_carries_the_envelope() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        result = (await peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}}))[
            "result"
        ]
        mcp_methods.parse_server_result("tools/call", "2025-11-25", result)
        assert result["isError"] is False
        structured = result["structuredContent"]
        assert structured["tool"] == "probe" and structured["ok"] is True and structured["call_id"] == "call-1"
        jsonschema.validate(structured, TOOLS["probe"].output_schema)
        summary, as_json = (block["text"] for block in result["content"])
        assert summary.startswith("probe 10.0.0.5 finished") and "1 host, 1 open port" in summary
        assert "call-1" in summary
        assert json.loads(as_json) == structured
        assert peer.backend.calls == [("probe", {"target": "10.0.0.5"}, "call-1")]

    run(scenario())


def test_tool_failure_is_an_error_result() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        result = (await peer.request("tools/call", {"name": "broken", "arguments": {"target": "10.0.0.5"}}))[
            "result"
        ]
        assert result["isError"] is True
        assert result["structuredContent"]["error"]["error_type"] == "execution"
        assert "failed (execution)" in result["content"][0]["text"]
        assert "Next step:" in result["content"][0]["text"]

    run(scenario())


def test_validation_failure_is_an_error_result_and_nothing_runs() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        result = (await peer.request("tools/call", {"name": "probe", "arguments": {}}))["result"]
        assert result["isError"] is True
        assert result["structuredContent"]["error"]["error_type"] == "validation"
        assert peer.backend.started == []

    run(scenario())


def test_unknown_tool_is_invalid_params() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        error = error_of(await peer.request("tools/call", {"name": "nessus", "arguments": {}}))
        assert error["code"] == -32602 and "nessus" in error["message"]
        assert error["data"]["available"] == list(TOOLS)
        assert peer.backend.calls == []

    run(scenario())


def test_unknown_tool_raised_by_the_backend_is_invalid_params() -> None:
    class Vanishing(FakeBackend):
        def list_tools(self) -> list[ToolInfo]:
            return [*super().list_tools(), ToolInfo("ghost", "Ghost", "gone", {"type": "object"}, {"type": "object"})]

    async def scenario() -> None:
        peer = Peer(Vanishing())
        await peer.initialize()
        error = error_of(await peer.request("tools/call", {"name": "ghost"}))
        assert error["code"] == -32602 and "ghost" in error["message"]
        assert peer.session.calls == {}

    run(scenario())


@pytest.mark.parametrize(
    "params",
    [
        {"arguments": {"target": "10.0.0.5"}},
        {"name": 42},
        {"name": "probe", "arguments": ["10.0.0.5"]},
        {"name": "probe", "arguments": "target=10.0.0.5"},
        [1, 2],
        "probe",
    ],
)
def test_malformed_call_params_are_invalid_params(params: Any) -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        reply = await peer.send({"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": params})
        assert error_of(reply)["code"] == -32602 and reply["id"] == "x"
        assert peer.backend.calls == []

    run(scenario())


def test_backend_exception_becomes_an_internal_error_result() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.raise_on.add("probe")
        peer = Peer(backend)
        await peer.initialize()
        result = (await peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}}))["result"]
        assert result["isError"] is True
        assert result["structuredContent"]["error"]["error_type"] == "internal"
        assert "backend exploded" not in json.dumps(result)

    run(scenario())


def test_huge_values_are_not_echoed_back() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        huge = "A" * (1 << 20)
        arguments = {"target": "10.0.0.5", "extra_args": huge}
        reply = await peer.request("tools/call", {"name": "probe", "arguments": arguments})
        assert reply["result"]["structuredContent"]["error"]["error_type"] == "validation"
        assert len(jsonrpc.encode(reply)) < 8192
        reply = await peer.request("tools/call", {"name": huge, "arguments": {}})
        assert error_of(reply)["code"] == -32602 and len(jsonrpc.encode(reply)) < 8192

    run(scenario())


# ---------------------------------------------------------------- progress


def test_progress_is_forwarded_and_monotonic() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        params = {"name": "probe", "arguments": {"target": "10.0.0.5", "progress": [10, 5, 50, 50, 100, 99]},
                  "_meta": {"progressToken": "tok"}}
        reply = await peer.request("tools/call", params)
        assert reply["result"]["isError"] is False
        progress = [n["params"] for n in peer.notes if progress_of(n)]
        assert [p["progress"] for p in progress] == [10, 50, 100]
        assert {p["progressToken"] for p in progress} == {"tok"}
        assert {p["total"] for p in progress} == {100}
        assert [p["message"] for p in progress] == ["step 0", "step 2", "step 4"]

    run(scenario())


def test_no_progress_without_a_token() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        await peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}})
        assert [n for n in peer.notes if progress_of(n)] == []
        assert peer.backend.calls  # the call did run

    run(scenario())


def test_progress_reported_after_the_reply_is_dropped() -> None:
    class Late(FakeBackend):
        kept: ProgressSink | None = None

        async def acall(self, tool: str, arguments: dict[str, Any], *, call_id: str | None = None,
                        progress: ProgressSink | None = None, caller: str | None = None) -> CallOutcome:
            self.kept = progress
            return await super().acall(tool, arguments, call_id=call_id, progress=None, caller=caller)

    async def scenario() -> None:
        backend = Late()
        peer = Peer(backend)
        await peer.initialize()
        params = {"name": "probe", "arguments": {"target": "10.0.0.5"}, "_meta": {"progressToken": 7}}
        await peer.request("tools/call", params)
        assert backend.kept is not None
        backend.kept(50.0, 100.0, "too late")
        assert [n for n in peer.notes if progress_of(n)] == []

    run(scenario())


# ---------------------------------------------------------------- cancellation


def holding(request_id: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda note: progress_of(note) and note["params"]["progressToken"] == f"hold-{request_id}"


def hold_params(request_id: Any, **arguments: Any) -> dict[str, Any]:
    return {"name": "hold", "arguments": {"target": "10.0.0.5", **arguments},
            "_meta": {"progressToken": f"hold-{request_id}"}}


def test_cancelling_a_running_call_stops_it_and_sends_no_reply() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        task = peer.start("tools/call", hold_params(1), id=1)
        await peer.until(holding(1))
        await peer.notify("notifications/cancelled", {"requestId": 1, "reason": "no longer needed"})
        assert await asyncio.wait_for(task, 10) is None
        assert peer.backend.counts["cancelled"] == 1
        assert peer.backend.cancel_requests == ["call-1"]
        assert peer.session.calls == {}
        assert (await peer.request("ping"))["result"] == {}

    run(scenario())


def test_cancelling_a_queued_call_removes_it_before_it_starts() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        first = peer.start("tools/call", hold_params(1), id=1)
        await peer.until(holding(1))
        second = peer.start("tools/call", hold_params(2), id=2)
        await peer.until(lambda note: holding(2)(note) and note["params"]["message"] == "queued")
        await peer.notify("notifications/cancelled", {"requestId": "2"})  # ids correlate across str/int
        assert await asyncio.wait_for(second, 10) is None
        assert peer.backend.started == ["call-1"]
        peer.backend.release()
        reply = await asyncio.wait_for(first, 10)
        assert reply["result"]["isError"] is False
        assert peer.backend.counts == {"cancelled": 1, "ok": 1}

    run(scenario())


def test_cancel_falls_back_to_the_task_when_the_backend_does_not_know_the_call() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.accept_cancel = False
        peer = Peer(backend)
        await peer.initialize()
        task = peer.start("tools/call", hold_params(1), id=1)
        await peer.until(holding(1))
        await peer.notify("notifications/cancelled", {"requestId": 1})
        assert await asyncio.wait_for(task, 10) is None
        assert not task.cancelled()
        assert peer.session.calls == {}
        assert (await peer.request("ping"))["result"] == {}

    run(scenario())


def test_cancel_all_answers_calls_with_their_cancelled_outcome() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        task = peer.start("tools/call", hold_params(1), id=1)
        await peer.until(holding(1))
        assert peer.session.in_flight == 1
        assert peer.dispatcher.cancel_all(peer.session) == 1
        reply = await asyncio.wait_for(task, 10)
        assert reply["result"]["isError"] is True
        assert reply["result"]["structuredContent"]["error"]["error_type"] == "cancelled"

    run(scenario())


def test_a_request_id_cannot_be_reused_while_in_flight() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        task = peer.start("tools/call", hold_params(5), id=5)
        await peer.until(holding(5))
        # Whatever the method, the refusal carries no id: the only reply with id 5 is the call's own.
        for method, params in (("tools/call", hold_params(5)), ("ping", None), ("no/such/method", None)):
            reply = await peer.send({"jsonrpc": "2.0", "id": "5", "method": method, "params": params})
            assert error_of(reply)["code"] == -32600 and reply["id"] is None, method
            assert error_of(reply)["data"] == {"id": "5"}
        peer.backend.release()
        assert (await asyncio.wait_for(task, 10))["result"]["isError"] is False
        assert (await peer.send({"jsonrpc": "2.0", "id": 5, "method": "ping"}))["id"] == 5  # free again

    run(scenario())


# ---------------------------------------------------------------- 2026-07-28 era


def test_discover_answers_and_locks_the_connection_to_the_modern_era() -> None:
    async def scenario() -> None:
        peer = Peer(list_ttl_ms=30_000)
        result = (await peer.request("server/discover", envelope()))["result"]
        mcp_methods.parse_server_result("server/discover", MODERN, result)
        assert result["supportedVersions"] == [MODERN]
        assert result["ttlMs"] == 30_000 and result["cacheScope"] == "public"
        assert result["resultType"] == "complete"
        assert result["capabilities"]["tools"] == {"listChanged": False}
        assert result["_meta"][types.SERVER_INFO_META_KEY]["name"] == "labrecon"
        assert peer.session.era is Era.MODERN
        error = error_of(
            await peer.request(
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}},
            )
        )
        assert error["code"] == -32022
        assert error["data"] == {"supported": [MODERN], "requested": "2025-11-25"}
        types.UnsupportedProtocolVersionErrorData.model_validate(error["data"])

    run(scenario())


def test_an_unsupported_modern_version_is_refused_without_locking() -> None:
    async def scenario() -> None:
        peer = Peer()
        error = error_of(await peer.request("server/discover", envelope("2027-01-01")))
        assert error["code"] == -32022
        assert error["data"] == {"supported": [MODERN], "requested": "2027-01-01"}
        assert peer.session.era is None
        assert (await peer.initialize())["result"]["protocolVersion"] == "2025-11-25"

    run(scenario())


@pytest.mark.parametrize(
    "meta",
    [
        {types.PROTOCOL_VERSION_META_KEY: MODERN},
        {types.PROTOCOL_VERSION_META_KEY: 2026, types.CLIENT_CAPABILITIES_META_KEY: {}},
        {types.PROTOCOL_VERSION_META_KEY: MODERN, types.CLIENT_CAPABILITIES_META_KEY: []},
        {types.PROTOCOL_VERSION_META_KEY: MODERN, types.CLIENT_CAPABILITIES_META_KEY: {},
         types.LOG_LEVEL_META_KEY: "chatty"},
    ],
)
def test_a_malformed_envelope_is_invalid_params(meta: dict[str, Any]) -> None:
    async def scenario() -> None:
        peer = Peer()
        assert error_of(await peer.request("tools/list", {"_meta": meta}))["code"] == -32602
        assert peer.session.era is None

    run(scenario())


def test_modern_tools_list_and_call() -> None:
    async def scenario() -> None:
        peer = Peer()
        listing = (await peer.request("tools/list", envelope()))["result"]
        mcp_methods.parse_server_result("tools/list", MODERN, listing)
        assert listing["ttlMs"] == 60_000 and listing["cacheScope"] == "public"
        assert listing["resultType"] == "complete"
        assert listing["_meta"][types.SERVER_INFO_META_KEY]["name"] == "labrecon"
        assert {"title", "outputSchema", "annotations"} <= set(listing["tools"][0])
        params = {"name": "probe", "arguments": {"target": "10.0.0.5"}, **envelope(progressToken=3)}
        result = (await peer.request("tools/call", params))["result"]
        mcp_methods.parse_server_result("tools/call", MODERN, result)
        assert result["resultType"] == "complete" and result["isError"] is False
        assert result["structuredContent"]["ok"] is True
        assert result["_meta"][types.SERVER_INFO_META_KEY]["name"] == "labrecon"
        assert [n["params"]["progress"] for n in peer.notes if progress_of(n)] == [10, 50, 100]
        assert peer.session.era is Era.MODERN and peer.session.protocol_version == MODERN

    run(scenario())


def test_modern_log_messages_need_a_level_in_the_request() -> None:
    async def scenario() -> None:
        peer = Peer()
        call = {"name": "probe", "arguments": {"target": "10.0.0.5"}}
        await peer.request("tools/call", {**call, **envelope()})
        assert [n for n in peer.notes if n["method"] == "notifications/message"] == []
        await peer.request("tools/call", {**call, **envelope(**{types.LOG_LEVEL_META_KEY: "debug"})})
        events = [n["params"]["data"]["event"] for n in peer.notes if n["method"] == "notifications/message"]
        assert events == ["call_started", "call_finished"]

    run(scenario())


@pytest.mark.parametrize(("method", "params"), [("ping", {}), ("logging/setLevel", {"level": "info"})])
def test_handshake_only_methods_do_not_exist_in_the_modern_era(method: str, params: dict[str, Any]) -> None:
    async def scenario() -> None:
        peer = Peer()
        assert error_of(await peer.request(method, {**params, **envelope()}))["code"] == -32601

    run(scenario())


def test_a_modern_connection_needs_the_envelope_on_every_request() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.request("server/discover", envelope())
        assert error_of(await peer.request("tools/list"))["code"] == -32602
        assert error_of(await peer.request("ping"))["code"] == -32602

    run(scenario())


def test_a_handshake_connection_refuses_the_envelope() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize()
        assert error_of(await peer.request("tools/list", envelope()))["code"] == -32600
        assert error_of(await peer.request("server/discover", envelope()))["code"] == -32600
        assert error_of(await peer.request("server/discover"))["code"] == -32601

    run(scenario())


def test_discover_without_the_envelope_is_invalid_params() -> None:
    async def scenario() -> None:
        peer = Peer()
        assert error_of(await peer.request("server/discover"))["code"] == -32602
        assert peer.session.era is None

    run(scenario())


def test_single_era_sessions_for_stateless_transports() -> None:
    async def scenario() -> None:
        legacy = Peer(session=Session.handshake("2025-06-18"))
        listing = (await legacy.request("tools/list"))["result"]
        assert "outputSchema" in listing["tools"][0] and "ttlMs" not in listing
        assert error_of(await legacy.request("tools/list", envelope()))["code"] == -32600
        assert error_of(await legacy.initialize())["code"] == -32600

        modern = Peer(session=Session.modern())
        error = error_of(
            await modern.request(
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}},
            )
        )
        assert error["code"] == -32022
        assert error_of(await modern.request("tools/list"))["code"] == -32602
        assert "tools" in (await modern.request("tools/list", envelope()))["result"]
        with pytest.raises(ValueError):
            Session.handshake(MODERN)

    run(scenario())


# ---------------------------------------------------------------- batches


def test_batches_on_a_2025_03_26_session() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.initialize("2025-03-26")
        replies = await peer.send(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "ping"},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "probe", "arguments": {"target": "10.0.0.5"}}},
                42,
                {"jsonrpc": "2.0", "id": 3, "method": "initialize",
                 "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                            "clientInfo": {"name": "x", "version": "1"}}},
                {"jsonrpc": "2.0", "id": 4, "method": "nope"},
            ]
        )
        assert [r["id"] for r in replies] == [1, 2, None, 3, 4]
        assert replies[0]["result"] == {}
        assert replies[1]["result"]["isError"] is False
        assert [error_of(r)["code"] for r in replies[2:]] == [-32600, -32600, -32601]
        only_notifications = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
        assert await peer.send(only_notifications) is None
        assert error_of(await peer.send([]))["code"] == -32600

    run(scenario())


@pytest.mark.parametrize("prepare", ["fresh", "2024-11-05", "2025-06-18", "2025-11-25", "modern"])
def test_batches_are_refused_at_other_versions(prepare: str) -> None:
    async def scenario() -> None:
        peer = Peer()
        if prepare == "modern":
            await peer.request("server/discover", envelope())
        elif prepare != "fresh":
            await peer.initialize(prepare)
        reply = await peer.send([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        assert isinstance(reply, dict) and reply["id"] is None
        assert error_of(reply)["code"] == -32600

    run(scenario())


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        '{"jsonrpc": "2.0", "id": 1, "method": "ping"',
        '{"jsonrpc": "2.0", "id": NaN, "method": "ping"}',
        '{"jsonrpc": "2.0", "id": 1e999, "method": "ping"}',
        "[" * 200_000,
        b"\xff\xfe{}",
        "",
    ],
)
def test_parse_errors_carry_a_null_id_and_the_session_carries_on(raw: str | bytes) -> None:
    async def scenario() -> None:
        peer = Peer()
        reply = await peer.text(raw)
        assert reply["id"] is None and error_of(reply)["code"] == -32700
        assert (await peer.text('{"jsonrpc":"2.0","id":1,"method":"ping"}'))["result"] == {}

    run(scenario())


@pytest.mark.parametrize(
    ("message", "reply_id"),
    [
        (42, None),
        ("ping", None),
        (None, None),
        ({"jsonrpc": "1.0", "id": 7, "method": "ping"}, 7),
        ({"id": 7, "method": "ping"}, 7),
        ({"jsonrpc": "2.0", "id": 7, "method": 12}, 7),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 8}, 8),
        ({"jsonrpc": "2.0"}, None),
    ],
)
def test_invalid_requests(message: Any, reply_id: Any) -> None:
    async def scenario() -> None:
        peer = Peer()
        reply = await peer.send(message)
        assert error_of(reply)["code"] == -32600 and reply["id"] == reply_id

    run(scenario())


def test_responses_from_the_client_are_ignored() -> None:
    async def scenario() -> None:
        peer = Peer()
        assert await peer.send({"jsonrpc": "2.0", "id": 1, "result": {}}) is None
        assert await peer.send({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}) is None

    run(scenario())


# ---------------------------------------------------------------- pieces


def test_line_framer_bounds_every_line() -> None:
    framer = LineFramer(16)
    assert framer.feed(b'{"a":') == []
    assert framer.feed(b'1}\r\n\n  \n{"b"') == [b'{"a":1}']
    assert framer.feed(b":2}\n" + b"x" * 40) == [b'{"b":2}']
    assert framer.buffered == 0  # the long line is being discarded, not held
    assert framer.feed(b"y" * 40 + b"\nok\n") == [Oversized(80), b"ok"]
    assert framer.feed(b"tail") == [] and framer.finish() == [b"tail"]
    assert framer.finish() == []


def test_encoded_messages_are_single_ascii_lines() -> None:
    line = jsonrpc.encode(jsonrpc.result_response(1, {"text": "naïve\nline\u2028"}))
    assert b"\n" not in line and line.isascii()
    with pytest.raises(ValueError):
        jsonrpc.encode({"x": float("nan")})


def test_summary_of_a_failure_leads_with_what_to_do() -> None:
    outcome = CallOutcome.failure(
        "nmap", "c1", ErrorType.RESOURCE_EXHAUSTED, "queue full", retry_after_sec=2.5, target="10.0.0.5"
    )
    text = summarize(outcome)
    assert text.startswith("nmap 10.0.0.5 failed (resource_exhausted): queue full.")
    assert "Retry after 2.5s." in text and "Next step:" in text and text.endswith("Call id c1.")


def test_unknown_tool_error_from_the_api_names_the_alternatives() -> None:
    assert "available: a, b" in str(UnknownTool("x", ["a", "b"]))
