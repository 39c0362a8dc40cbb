"""Running the HTTP daemon on 127.0.0.1 for tests, and talking to it the way real clients do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from supervisor.runtime import Runtime
from tests.fakes.install import install_fake
from tests.helpers import wait_until
from tests.runtimes import scan_calls
from transports.http.daemon import HttpDaemon

TIMEOUT = 30.0
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
ACCEPT_BOTH = {"accept": "application/json, text/event-stream"}

ARGUMENTS: dict[str, dict[str, Any]] = {
    "nmap": {"target": "10.0.0.5", "ports": "22,80"},
    "masscan": {"target": "10.0.0.0/30", "ports": "80"},
    "gobuster": {"target": "web.lab.internal"},
}

HANDLE_TOOLS = ["scans_list", "scan_status", "scan_result", "scan_cancel"]
"""Listed after the scanner tools wherever scans are kept."""

CLIENT_KINDS = ("sse", "legacy", "auto")
"""Legacy HTTP+SSE, Streamable HTTP with the initialize handshake, Streamable HTTP negotiating 2026-07-28."""


@contextmanager
def running_daemon(runtime: Runtime, **kwargs: Any) -> Iterator[HttpDaemon]:
    daemon = HttpDaemon.start(runtime, runtime.settings, host="127.0.0.1", port=0, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop(grace=0)


def sdk_client(kind: str, url: str, **options: Any) -> Client:
    """The official client of `kind` (see `CLIENT_KINDS`) for the daemon at `url`; `options` as `Client` takes them."""
    if kind == "sse":
        return Client(sse_client(url + "/sse"), mode="legacy", read_timeout_seconds=TIMEOUT, **options)
    if kind == "legacy":
        return Client(url + "/mcp", mode="legacy", read_timeout_seconds=TIMEOUT, **options)
    return Client(url + "/mcp", read_timeout_seconds=TIMEOUT, **options)


@asynccontextmanager
async def sdk_client_with_token(
    kind: str, url: str, token: str, client_info: types.Implementation | None = None
) -> AsyncIterator[Client]:
    """`sdk_client`, sending `Authorization: Bearer <token>` on every request (and `client_info` if given)."""
    headers = {"authorization": f"Bearer {token}"}
    options: dict[str, Any] = {"read_timeout_seconds": TIMEOUT, "client_info": client_info}
    if kind == "sse":
        async with Client(sse_client(url + "/sse", headers=headers), mode="legacy", **options) as client:
            yield client
        return
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT, read=300)) as http:
        transport = streamable_http_client(url + "/mcp", http_client=http)
        async with Client(transport, mode="legacy" if kind == "legacy" else "auto", **options) as client:
            yield client


def binary(runtime: Runtime, tool: str) -> str:
    return getattr(runtime.settings.tools, tool).binary


def fake_pids(runtime: Runtime, tool: str = "nmap") -> list[int]:
    return [call["pid"] for call in scan_calls(binary(runtime, tool))]


def idle(runtime: Runtime, tool: str = "nmap") -> bool:
    status = runtime.status().tools[tool]
    return status.in_flight == 0 and status.queued == 0 and status.stashed == 0


# --- raw JSON-RPC ---------------------------------------------------------------------------


def request(method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


INITIALIZE = request(
    "initialize",
    {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    request_id=0,
)


def envelope(**extra: Any) -> dict[str, Any]:
    return {
        types.PROTOCOL_VERSION_META_KEY: MODERN,
        types.CLIENT_CAPABILITIES_META_KEY: {},
        types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "1"},
        **extra,
    }


def modern(method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> tuple[dict, dict]:
    """A 2026-07-28 request and the routing headers that must accompany it."""
    body = request(method, {**(params or {}), "_meta": envelope()}, request_id)
    headers = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": method}
    if method == "tools/call":
        headers["mcp-name"] = body["params"]["name"]
    return body, headers


def open_session(client: httpx.Client, url: str) -> str:
    """Initialize a handshake-era Streamable HTTP session; returns its id."""
    response = client.post(url + "/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    headers = {**ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    assert client.post(url + "/mcp", json=notification("notifications/initialized"), headers=headers).status_code == 202
    return session_id


def session_headers(session_id: str) -> dict[str, str]:
    return {**ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}


# --- server-sent events -----------------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def priming(self) -> bool:
        """The empty event that opens a resumable stream: an id to resume from, and no message."""
        return self.id is not None and self.data == ""

    @property
    def event_id(self) -> str:
        """The id of an event that must carry one (every event of a resumable stream does)."""
        assert self.id is not None, f"an event without an id: {self}"
        return self.id


class _EventReader:
    """Server-sent events from lines: fed one line at a time, it returns each event as it completes."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []
        self.id: str | None = None
        self.retry: int | None = None

    def feed(self, line: str) -> Event | None:
        if not line:
            done = Event(self.event, "\n".join(self.data), self.id, self.retry) if self.data else None
            self.event, self.data, self.id, self.retry = "message", [], None, None
            return done
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].strip())
        elif line.startswith("id:"):
            self.id = line[3:].strip()
        elif line.startswith("retry:"):
            self.retry = int(line[6:].strip())
        return None


def parse_events(text: str) -> list[Event]:
    """Every event of a whole event stream, priming events included (keepalive comments are not events)."""
    reader = _EventReader()
    parsed = [reader.feed(line) for line in [*text.replace("\r\n", "\n").split("\n"), ""]]
    return [event for event in parsed if event is not None]


def messages_in(text: str) -> list[Any]:
    """The JSON-RPC messages an event stream carried, in order."""
    return [event.json() for event in parse_events(text) if not event.priming]


async def aevents(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of a streaming response as they arrive (comments and keepalives skipped)."""
    reader = _EventReader()
    async for line in response.aiter_lines():
        if (event := reader.feed(line)) is not None:
            yield event


def events(response: httpx.Response) -> Iterator[Event]:
    """The same, for a synchronous streaming response."""
    reader = _EventReader()
    for line in response.iter_lines():
        if (event := reader.feed(line)) is not None:
            yield event


def served_url(log: Path) -> str | None:
    """The URL a `labrecon serve --transport http` logged it serves on (in its JSON lines on `log`), if it did yet."""
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "labrecon HTTP daemon serving":
            return record["url"]
    return None


@dataclass
class ServeProcess:
    """A `labrecon serve --transport http` child process, its ops socket, its stderr log and its stdout."""

    process: subprocess.Popen[bytes]
    ops: Path
    log: Path
    out: Path

    def ops_client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.ops)), base_url="http://labrecon", **kwargs)

    def url(self) -> str:
        """The daemon's HTTP address, once it has logged it."""
        return wait_until(lambda: served_url(self.log), 60.0, what="the daemon's URL")


def write_fake_config(
    tmp_path: Path, config: Sequence[str] = (), tools: Mapping[str, Sequence[str]] | None = None
) -> Path:
    """`tmp_path/labrecon.toml`: no DNS, `config`'s TOML lines, then each tool run by its fake with `tools[tool]`'s
    lines in its table; returns its path. Written again, it is the same daemon's config changed.
    """
    lines = ["[policy]", "dns = false", *config]
    for tool in ("nmap", "masscan", "gobuster"):
        lines += [f"[tools.{tool}]", f'binary = "{install_fake(tmp_path / "bin", tool)}"', *(tools or {}).get(tool, ())]
    path = tmp_path / "labrecon.toml"
    temporary = path.with_name(path.name + ".new")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(path)  # as an editor saves: a reader sees the old file or the new one, never half
    return path


@contextmanager
def serve_process(
    tmp_path: Path,
    *args: str,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> Iterator[ServeProcess]:
    """Serve over HTTP from the command line on fake scanners; up once its ops socket exists, killed if left running.

    `config` adds TOML lines, `args` adds `serve` options, `env` adds variables (LABRECON_* from the test's own
    environment are dropped), `wrap` prefixes the command (e.g. `unshare -n`).
    """
    config_path = write_fake_config(tmp_path, config)
    ops, log, out = tmp_path / "ops.sock", tmp_path / "stderr.log", tmp_path / "stdout.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LABRECON_")} | dict(env or {})
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "transports.cli", "serve", "--config", str(config_path), "--transport", "http",
         "--port", "0", "--ops-socket", str(ops), "--grace", "1", *args],
        cwd=Path(__file__).resolve().parent.parent,
        env=environment,
        stdout=out.open("wb"),
        stderr=log.open("wb"),
    )
    try:
        wait_until(lambda: ops.exists() or process.poll() is not None, 60.0, what="the ops socket")
        assert process.poll() is None, log.read_text()
        yield ServeProcess(process, ops, log, out)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
