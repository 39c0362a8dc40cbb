"""The stdio transport, from the outside: a real server process, raw lines and the official SDK client."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client, StdioServerParameters

from tests.backends import TOOLS, FakeBackend
from tests.helpers import wait_until
from transports.logs import JsonLineFormatter, configure_logging, correlation
from transports.mcp.dispatcher import McpDispatcher
from transports.stdio import StdioTransport, serve_stdio

SCRIPT = Path(__file__).with_name("serve_fake_backend.py")
TIMEOUT = 20.0
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
MODERN = "2026-07-28"


def envelope(**extra: Any) -> dict[str, Any]:
    return {
        "_meta": {
            types.PROTOCOL_VERSION_META_KEY: MODERN,
            types.CLIENT_CAPABILITIES_META_KEY: {},
            types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "1"},
            **extra,
        }
    }


class LinePeer:
    """Talks raw newline-delimited JSON to a server through two byte streams.

    Every line the server writes must be a JSON-RPC message (or a batch of
    them); anything else fails the test on the spot.
    """

    def __init__(self, write: Callable[[bytes], object], lines: Iterator[bytes]) -> None:
        self._write = write
        self._inbox: queue.Queue[Any] = queue.Queue()
        self.received: list[Any] = []
        self._pending: list[Any] = []
        self._ids = itertools.count(1000)
        self.pump = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self.pump.start()

    def _pump(self, lines: Iterator[bytes]) -> None:
        for line in lines:
            self._inbox.put(line)
        self._inbox.put(None)

    def send(self, message: Any) -> None:
        self._write(message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n")

    def next(self, timeout: float = TIMEOUT) -> Any:
        if self._pending:
            return self._pending.pop(0)
        return self._read(timeout)

    def _read(self, timeout: float) -> Any:
        line = self._inbox.get(timeout=timeout)
        assert line is not None, "the server closed stdout"
        message = json.loads(line)
        for item in message if isinstance(message, list) else [message]:
            types.jsonrpc_message_adapter.validate_python(item)
        self.received.append(message)
        return message

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        for index, message in enumerate(self._pending):
            if predicate(message):
                return self._pending.pop(index)
        while True:
            message = self._read(timeout)
            if predicate(message):
                return message
            self._pending.append(message)

    def reply(self, request_id: Any) -> dict[str, Any]:
        return self.wait_for(lambda m: isinstance(m, dict) and "method" not in m and m.get("id") == request_id)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.reply(request_id)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def rest(self) -> list[Any]:
        """Everything still unread once the server has closed stdout."""
        messages = list(self._pending)
        self._pending.clear()
        while (line := self._inbox.get(timeout=TIMEOUT)) is not None:
            messages.append(json.loads(line))
            self.received.append(messages[-1])
        return messages


class ServerProcess(LinePeer):
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stderr_lines: list[str] = []
        self._logs: queue.Queue[str | None] = queue.Queue()
        self.stderr_pump = threading.Thread(target=self._pump_stderr, daemon=True)
        self.stderr_pump.start()
        super().__init__(self._write_stdin, iter(self.proc.stdout.readline, b""))

    def _write_stdin(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(line)
            self._logs.put(line)
        self._logs.put(None)

    def log(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for a JSON log record on stderr matching `predicate`."""
        for line in list(self.stderr_lines):
            if line.startswith("{") and predicate(json.loads(line)):
                return json.loads(line)
        while (arrived := self._logs.get(timeout=TIMEOUT)) is not None:
            if arrived.startswith("{") and predicate(record := json.loads(arrived)):
                return record
        raise AssertionError("stderr closed before the log record appeared")

    def initialize(self, version: str = "2025-11-25") -> dict[str, Any]:
        reply = self.request("initialize", {**INIT, "protocolVersion": version})
        self.notify("notifications/initialized")
        return reply

    def close_stdin(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=TIMEOUT)

    def dispose(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self.pump.join(TIMEOUT)
        self.stderr_pump.join(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        servers.append(ServerProcess(*args))
        return servers[-1]

    yield start
    for server in servers:
        server.dispose()


def is_progress(token: Any) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, dict) and m.get("method") == "notifications/progress" and m["params"][
        "progressToken"
    ] == token


def wait_gone(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=TIMEOUT)
    assert not psutil.pid_exists(pid)


# ---------------------------------------------------------------- raw lines


def test_a_handshake_session_over_stdio(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    result = server.initialize()["result"]
    assert result["protocolVersion"] == "2025-11-25" and result["serverInfo"]["name"] == "labrecon"
    listing = server.request("tools/list")["result"]
    assert [tool["name"] for tool in listing["tools"]] == list(TOOLS)
    server.send({"jsonrpc": "2.0", "id": "call", "method": "tools/call",
                 "params": {"name": "probe", "arguments": {"target": "10.0.0.5"}, "_meta": {"progressToken": "p"}}})
    reply = server.reply("call")
    progress = [m["params"]["progress"] for m in server.received if is_progress("p")(m)]
    assert progress == [10, 50, 100]
    assert server.received.index(reply) > max(i for i, m in enumerate(server.received) if is_progress("p")(m))
    assert reply["result"]["isError"] is False
    assert server.request("ping")["result"] == {}
    assert server.close_stdin() == 0


def test_a_modern_session_over_stdio(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    discover = server.request("server/discover", envelope())["result"]
    assert discover["supportedVersions"] == [MODERN] and discover["resultType"] == "complete"
    assert discover["_meta"][types.SERVER_INFO_META_KEY]["name"] == "labrecon"
    listing = server.request("tools/list", envelope())["result"]
    assert listing["ttlMs"] > 0 and listing["cacheScope"] == "public"
    reply = server.request(
        "tools/call",
        {"name": "broken", "arguments": {"target": "10.0.0.5"}, **envelope(**{types.LOG_LEVEL_META_KEY: "info"})},
    )
    assert reply["result"]["isError"] is True and reply["result"]["resultType"] == "complete"
    logged = [m for m in server.received if isinstance(m, dict) and m.get("method") == "notifications/message"]
    assert [m["params"]["data"]["event"] for m in logged] == ["call_finished"]
    error = server.request("initialize", INIT)["error"]
    assert error["code"] == -32022 and error["data"]["supported"] == [MODERN]
    assert server.close_stdin() == 0


def test_every_malformed_line_gets_its_error_and_the_next_request_works(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    server.initialize()
    megabyte = 1 << 20
    cases: list[tuple[bytes, int, Any]] = [
        (b"garbage\n", -32700, None),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/li\n', -32700, None),
        (b"x" * megabyte + b"\n", -32700, None),
        (b"[" * megabyte + b"\n", -32700, None),
        (b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": "' + b"y" * megabyte + b'"}\n', -32602, 2),
        (b"\xff\xfe\xfd\n", -32700, None),
        (b"42\n", -32600, None),
        (b'"ping"\n', -32600, None),
        (b"[]\n", -32600, None),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}\n', -32600, None),
        (b'{"jsonrpc": "1.0", "id": 3, "method": "ping"}\n', -32600, 3),
        (b'{"jsonrpc": "2.0", "id": 4, "method": 7}\n', -32600, 4),
        (b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "probe", "arguments": []}}\n',
         -32602, 5),
        (b'{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": ["probe"]}}\n', -32602, 6),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "resources/list"}\n', -32601, 7),
        (b'[{"jsonrpc": "2.0", "id": 8, "method": "ping"}]\n', -32600, None),
    ]
    for raw, code, reply_id in cases:
        server.send(raw)
        reply = server.next()
        assert reply["error"]["code"] == code, (raw[:60], reply)
        assert reply["id"] == reply_id
        assert len(json.dumps(reply)) < 4096  # nothing of the megabyte is reflected back
    assert server.request("ping")["result"] == {}
    assert server.close_stdin() == 0


def test_a_one_megabyte_request_is_served(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    server.initialize()
    arguments = {"target": "10.0.0.5", "extra_args": "A" * (1 << 20)}
    reply = server.request("tools/call", {"name": "probe", "arguments": arguments})
    assert reply["result"]["isError"] is True
    assert reply["result"]["structuredContent"]["error"]["error_type"] == "validation"
    assert server.request("ping")["result"] == {}
    assert server.close_stdin() == 0


def test_lines_over_the_limit_are_refused_without_being_buffered(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn("--max-message-bytes", "65536")
    server.initialize()
    server.send(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"z" * 200_000 + b'"}}\n')
    reply = server.next()
    assert reply["id"] is None and reply["error"]["code"] == -32600
    assert reply["error"]["data"] == {"limit": 65536}
    assert server.request("ping")["result"] == {}
    server.send(b'{"jsonrpc": "2.0", "id": 9, "method": "pi')  # cut off by EOF
    assert server.close_stdin() == 0
    assert [m["error"]["code"] for m in server.rest()] == [-32700]


def test_a_batch_over_stdio(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    server.initialize("2025-03-26")
    server.send([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "probe", "arguments": {"target": "10.0.0.5"}}},
    ])
    replies = server.wait_for(lambda m: isinstance(m, list))
    assert [r["id"] for r in replies] == [1, 2]
    assert replies[1]["result"]["isError"] is False
    assert server.close_stdin() == 0


def test_cancellation_kills_the_process_group_and_is_counted(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": "scan", "method": "tools/call",
                 "params": {"name": "sleeper", "arguments": {"target": "10.0.0.5"}, "_meta": {"progressToken": "s"}}})
    note = server.wait_for(is_progress("s"))
    pid = int(note["params"]["message"].removeprefix("pid="))
    assert psutil.pid_exists(pid)
    server.notify("notifications/cancelled", {"requestId": "scan", "reason": "changed my mind"})
    wait_gone(pid)
    stats = server.request("tools/call", {"name": "stats", "arguments": {}})["result"]["structuredContent"]["result"]
    assert stats["counts"].get("cancelled") == 1 and stats["killed_pids"] == [pid]
    server.log(lambda r: r["msg"] == "tool call cancelled by the client; no reply sent")
    assert server.close_stdin() == 0
    server.rest()
    assert not [m for m in server.received if isinstance(m, dict) and m.get("id") == "scan"]


def test_eof_cancels_what_is_still_running_and_exits_cleanly(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn("--grace", "0.2")
    server.initialize()
    server.send({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
                 "params": {"name": "sleeper", "arguments": {"target": "10.0.0.5"}, "_meta": {"progressToken": "l"}}})
    pid = int(server.wait_for(is_progress("l"))["params"]["message"].removeprefix("pid="))
    assert server.close_stdin() == 0
    wait_gone(pid)
    reply = next(m for m in server.rest() if isinstance(m, dict) and m.get("id") == "long")
    assert reply["result"]["isError"] is True
    assert reply["result"]["structuredContent"]["error"]["error_type"] == "cancelled"


def test_stdout_carries_only_protocol_messages_and_logs_are_json(spawn: Callable[..., ServerProcess]) -> None:
    server = spawn()
    server.initialize()
    reply = server.request("tools/call", {"name": "noisy", "arguments": {"target": "10.0.0.5"}})
    call_id = reply["result"]["structuredContent"]["call_id"]
    assert server.close_stdin() == 0
    server.rest()  # every stdout line has been validated as JSON-RPC on the way in
    server.log(lambda r: r["msg"] == "stdio transport stopped")
    assert "stray output that must not reach the protocol stream" in server.stderr_lines
    records = [json.loads(line) for line in server.stderr_lines if line.startswith("{")]
    assert all({"ts", "level", "logger", "msg"} <= set(record) for record in records)
    assert any(record.get("call_id") == call_id and record["msg"] == "tool call finished" for record in records)


# ---------------------------------------------------------------- the actor in process


def test_stop_ends_the_transport_and_answers_calls_in_flight() -> None:
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    backend = FakeBackend()
    finished: Future[int] = Future()
    ref = StdioTransport.start(McpDispatcher(backend), stdin=stdin_r, stdout=stdout_w, finished=finished)
    reader = os.fdopen(stdout_r, "rb")
    peer = LinePeer(lambda data: os.write(stdin_w, data), iter(reader.readline, b""))
    try:
        peer.request("initialize", INIT)
        peer.send({"jsonrpc": "2.0", "id": "held", "method": "tools/call",
                   "params": {"name": "hold", "arguments": {"target": "10.0.0.5"}, "_meta": {"progressToken": "h"}}})
        peer.wait_for(is_progress("h"))
        assert ref.proxy().stats().get(timeout=TIMEOUT)["in_flight"] == 1
        assert ref.stop(timeout=TIMEOUT) is True
        assert finished.result(timeout=0) == 0
        assert not any(thread.name == "labrecon-stdio" for thread in threading.enumerate())
        os.close(stdout_w)
        reply = next(m for m in peer.rest() if m.get("id") == "held")
        assert reply["result"]["structuredContent"]["error"]["error_type"] == "cancelled"
        assert backend.counts["cancelled"] == 1
        assert os.get_blocking(stdin_r)  # stdin is handed back the way it was found
    finally:
        reader.close()
        for fd in (stdin_r, stdin_w):
            os.close(fd)


def test_a_client_that_stops_reading_loses_progress_but_never_a_reply() -> None:
    """stdout is a pipe nobody drains for a while: progress beyond a bounded backlog is dropped, the reply is kept."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    ref = StdioTransport.start(McpDispatcher(FakeBackend()), stdin=stdin_r, stdout=stdout_w)
    reader = os.fdopen(stdout_r, "rb")
    steps = 20_000  # ~3 MB of notifications: far more than the pipe and the writer's backlog hold
    peer = None
    try:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
        os.write(stdin_w, json.dumps(initialize).encode() + b"\n")
        assert json.loads(reader.readline())["id"] == 1
        # From here on nobody reads stdout until the call is over.
        os.write(stdin_w, json.dumps({
            "jsonrpc": "2.0", "id": "flood", "method": "tools/call",
            "params": {"name": "probe", "arguments": {"target": "10.0.0.5", "progress": list(range(1, steps + 1))},
                       "_meta": {"progressToken": "f"}},
        }).encode() + b"\n")
        stats = ref.proxy().stats

        def flood_over() -> bool:
            now = stats().get(timeout=TIMEOUT)
            return now["notifications_dropped"] > 0 and now["in_flight"] == 0

        wait_until(flood_over, what="progress to be dropped and the flooding call to finish")
        dropped = stats().get(timeout=TIMEOUT)["notifications_dropped"]
        assert dropped < steps
        peer = LinePeer(lambda data: os.write(stdin_w, data), iter(reader.readline, b""))
        reply = peer.reply("flood")  # reading resumes: the backlog drains, and the reply is in it
        assert reply["result"]["isError"] is False
        progress = [m for m in peer.received if isinstance(m, dict) and m.get("method") == "notifications/progress"]
        assert len(progress) == steps - dropped
        values = [m["params"]["progress"] for m in progress]
        assert values == sorted(values)
    finally:
        ref.stop(timeout=TIMEOUT)
        os.close(stdout_w)
        if peer is not None:
            peer.pump.join(TIMEOUT)
        reader.close()
        for fd in (stdin_r, stdin_w):
            os.close(fd)


def test_one_socket_as_both_stdin_and_stdout() -> None:
    """As under inetd or socat: the client's requests arriving must not be taken for stdout closing."""
    ours, theirs = socket.socketpair()
    fd_in, fd_out = os.dup(theirs.fileno()), os.dup(theirs.fileno())
    theirs.close()
    finished: Future[int] = Future()
    ref = StdioTransport.start(McpDispatcher(FakeBackend()), stdin=fd_in, stdout=fd_out, finished=finished)
    reader = ours.makefile("rb")
    peer = LinePeer(ours.sendall, iter(reader.readline, b""))
    try:
        assert peer.request("initialize", INIT)["result"]["protocolVersion"] == INIT["protocolVersion"]
        assert peer.request("ping", {})["result"] == {}
        call = peer.request("tools/call", {"name": "probe", "arguments": {"target": "10.0.0.5"}})
        assert call["result"]["isError"] is False
    finally:
        ref.stop(timeout=TIMEOUT)
        ours.shutdown(socket.SHUT_RDWR)  # ends the peer's pump, which holds the reader
        peer.pump.join(TIMEOUT)
        reader.close()
        ours.close()
        for fd in (fd_in, fd_out):
            os.close(fd)


# ---------------------------------------------------------------- logs


def test_log_records_are_single_json_lines_stamped_with_the_call_id() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("DEBUG", stream=stream)
        configure_logging("DEBUG", stream=stream)  # reconfiguring must not duplicate lines
        log = logging.getLogger("labrecon.test")
        with correlation("c-42"):
            log.info("multi\nline", extra={"tool": "nmap"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra={"call_id": "c-43"})
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2
        first, second = (json.loads(line) for line in lines)
        assert first["msg"] == "multi\nline" and first["call_id"] == "c-42" and first["tool"] == "nmap"
        assert second["call_id"] == "c-43" and "ValueError: boom" in second["exc"]
        assert isinstance(JsonLineFormatter(), logging.Formatter)
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])


# ---------------------------------------------------------------- the official SDK client

ARGUMENTS: dict[str, dict[str, Any]] = {
    "probe": {"target": "10.0.0.5"},
    "broken": {"target": "10.0.0.5"},
    "hold": {"target": "10.0.0.5", "seconds": 0},
    "sleeper": {"target": "10.0.0.5", "seconds": 0},
    "noisy": {"target": "10.0.0.5"},
    "stats": {},
}


def sdk_client(mode: str | None) -> Client:
    params = StdioServerParameters(command=sys.executable, args=[str(SCRIPT), "--log-level", "WARNING"])
    if mode is None:
        return Client(params, read_timeout_seconds=TIMEOUT)
    return Client(params, mode=mode, read_timeout_seconds=TIMEOUT)


async def list_and_call_each(client: Client) -> None:
    listing = await client.list_tools()
    assert [tool.name for tool in listing.tools] == list(TOOLS)
    for tool in listing.tools:
        assert tool.title and tool.description and tool.input_schema["type"] == "object"
        assert tool.output_schema and tool.annotations and tool.annotations.read_only_hint is True
        result = await client.call_tool(tool.name, ARGUMENTS[tool.name])
        assert result.is_error is (tool.name == "broken"), result
        assert result.structured_content["tool"] == tool.name
        summary = result.content[0]
        assert isinstance(summary, types.TextContent) and summary.text.startswith(tool.name)
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    await client.call_tool("probe", {"target": "10.0.0.5", "progress": [10, 5, 50, 50, 100]},
                           progress_callback=on_progress)
    assert seen == [10, 50, 100]


def test_sdk_client_in_legacy_mode() -> None:
    async def scenario() -> None:
        async with sdk_client("legacy") as client:
            assert client.protocol_version == "2025-11-25"
            assert client.server_info is not None and client.server_info.name == "labrecon"
            assert client.server_capabilities.tools is not None
            await list_and_call_each(client)

    asyncio.run(scenario())


def test_sdk_client_in_auto_mode_speaks_2026_and_cancels() -> None:
    async def scenario() -> None:
        async with sdk_client(None) as client:
            assert client.protocol_version == MODERN
            assert client.server_info is not None and client.server_info.name == "labrecon"
            await list_and_call_each(client)

            started = anyio.Event()
            pids: list[int] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if message and message.startswith("pid="):
                    pids.append(int(message.removeprefix("pid=")))
                    started.set()

            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: client.call_tool("sleeper", {"target": "10.0.0.5"}, progress_callback=on_progress)
                )
                await started.wait()
                group.cancel_scope.cancel()
            await anyio.to_thread.run_sync(wait_gone, pids[0])
            stats = await client.call_tool("stats", {})
            assert stats.structured_content["result"]["counts"]["cancelled"] == 1

    asyncio.run(scenario())


class FileLikeInput:
    """stdin as an embedder may pass it: an object with `read` and no descriptor, here one that blocks on a pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, size: int) -> bytes:
        return os.read(self._fd, size)


def test_a_drain_ends_the_server_while_a_file_like_stdin_blocks() -> None:
    stdin_r, stdin_w = os.pipe()
    stdout = io.BytesIO()
    until = threading.Event()
    os.write(stdin_w, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode() + b"\n")
    serving = Future[int]()

    def serve() -> None:
        serving.set_result(
            serve_stdio(FakeBackend(), stdin=FileLikeInput(stdin_r), stdout=stdout, guard_stdout=False, until=until)
        )

    threading.Thread(target=serve, daemon=True).start()
    try:
        wait_until(lambda: b'"id":1' in stdout.getvalue(), what="the ping answered")
        until.set()  # what the runtime escalating does; stdin stays open and its read blocks
        assert serving.result(timeout=TIMEOUT) == 0, "the server waited for a read that never returns"
    finally:
        for fd in (stdin_r, stdin_w):
            os.close(fd)
