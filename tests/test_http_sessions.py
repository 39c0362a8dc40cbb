"""Abandoned Streamable HTTP sessions cannot lock other clients out.

Sessions that carried nothing but `initialize` expire after `session_unused_sec`;
a full table closes its least recently used session with no call in flight
and no open stream instead of refusing the newcomer; and one client address
(loopback excepted) holds at most `max_sessions_per_client` sessions. The
daemon runs on 127.0.0.1 over the fake scanners; the per-client cap, which
needs other client addresses, is driven through the app in process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.fakes.install import running
from tests.helpers import process_alive, wait_until
from tests.http_support import (
    ACCEPT_BOTH,
    ARGUMENTS,
    HANDLE_TOOLS,
    HANDSHAKE,
    INITIALIZE,
    binary,
    idle,
    notification,
    open_session,
    parse_events,
    request,
    running_daemon,
    sdk_client,
    session_headers,
)
from tests.runtimes import scan_calls
from transports.http.daemon import HttpDaemon, build_http_app
from transports.http.sessions import SessionKind

HANG = {"nmap": {"scenario": {"mode": "hang"}}}


def http_sessions(daemon: HttpDaemon) -> int:
    return daemon.mcp.counts()["http"]


def test_seventy_clients_that_initialize_and_vanish_do_not_lock_out_the_next(make_runtime):
    runtime = make_runtime()  # the defaults: 64 sessions, unused ones kept 30 s, idle ones 10 min
    with running_daemon(runtime) as daemon:
        with httpx.Client(base_url=daemon.url, timeout=10) as raw:
            for index in range(70):
                opened = raw.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
                assert opened.status_code == 200, (index, opened.status_code, opened.text)
        assert http_sessions(daemon) == 64

        async def newcomer() -> Any:
            async with sdk_client("legacy", daemon.url) as client:
                assert client.protocol_version == HANDSHAKE
                return await client.call_tool("nmap", ARGUMENTS["nmap"])

        result = asyncio.run(newcomer())
        assert not result.is_error and result.structured_content["ok"] is True
        assert http_sessions(daemon) == 63  # the newcomer ended its own session; the table never overflowed


def test_a_session_with_a_call_in_flight_or_an_open_stream_is_never_evicted(make_runtime):
    runtime = make_runtime(tools=HANG, http={"max_sessions": 2})
    nmap = binary(runtime, "nmap")
    call = request("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}}, request_id="scan")

    async def scenario(daemon: HttpDaemon) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            scanning = (await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).headers["mcp-session-id"]
            pending = asyncio.ensure_future(client.post("/mcp", json=call, headers=session_headers(scanning)))
            await asyncio.to_thread(wait_until, lambda: running(scan_calls(nmap)), what="the scan running")
            listening = (await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).headers["mcp-session-id"]
            async with client.stream("GET", "/mcp", headers=session_headers(listening)) as stream:
                assert stream.status_code == 200
                # Both sessions are held: the newcomer is refused, and nothing was closed for it.
                refused = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
                assert refused.status_code == 503 and refused.headers["retry-after"]
                assert refused.json()["id"] == 0 and "2 sessions" in refused.json()["error"]["message"]
                assert http_sessions(daemon) == 2
            # The stream has closed: that session may now make room, the scanning one still may not.
            def stream_closed() -> bool:
                session = daemon.mcp.sessions.get(listening, SessionKind.HTTP)
                return session is not None and session.streams == 0

            await asyncio.to_thread(wait_until, stream_closed)
            newcomer = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            assert newcomer.status_code == 200
            evicted = await client.post("/mcp", json=request("ping"), headers=session_headers(listening))
            assert evicted.status_code == 404
            assert not pending.done() and all(process_alive(c["pid"]) for c in scan_calls(nmap))
            assert (await client.delete("/mcp", headers=session_headers(scanning))).status_code == 204
            answer = await pending
            body = answer.json() if answer.headers["content-type"] == "application/json" else None
            return body if body is not None else parse_events(answer.text)[-1].json()

    with running_daemon(runtime) as daemon:
        reply = asyncio.run(scenario(daemon))
    assert reply["id"] == "scan" and reply["result"]["structuredContent"]["error"]["error_type"] == "cancelled"
    wait_until(lambda: idle(runtime))


def test_sessions_never_used_after_initialize_expire_quickly(make_runtime):
    runtime = make_runtime(http={"session_unused_sec": 0.3})  # session_idle_sec stays at 10 minutes
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        unused = open_session(client, daemon.url)  # initialize + notifications/initialized, then nothing
        used = open_session(client, daemon.url)
        assert client.post("/mcp", json=request("tools/list"), headers=session_headers(used)).status_code == 200
        wait_until(lambda: http_sessions(daemon) == 1, what="the unused session expired")
        assert client.post("/mcp", json=request("ping"), headers=session_headers(unused)).status_code == 404
        assert client.post("/mcp", json=request("ping"), headers=session_headers(used)).json()["result"] == {}


def test_a_session_holding_its_standalone_stream_is_not_expired_as_unused(make_runtime):
    runtime = make_runtime(http={"session_unused_sec": 0.3})
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        listening = open_session(client, daemon.url)
        with client.stream("GET", "/mcp", headers=session_headers(listening)) as stream:
            assert stream.status_code == 200
            unused = open_session(client, daemon.url)
            wait_until(lambda: http_sessions(daemon) == 1, what="the other unused session expired")
            assert client.post("/mcp", json=request("ping"), headers=session_headers(unused)).status_code == 404
            assert client.post("/mcp", json=request("ping"), headers=session_headers(listening)).status_code == 200


# --- one client address -----------------------------------------------------------------------


def _from(app: Any, address: str) -> httpx.AsyncClient:
    """A client the app sees as coming from `address` (in process: nothing is sent anywhere)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765", timeout=10)


def test_one_client_address_holds_at_most_max_sessions_per_client(make_runtime):
    runtime = make_runtime(http={"max_sessions_per_client": 2})
    app = build_http_app(runtime, runtime.settings)

    async def scenario() -> None:
        async with _from(app, "192.0.2.10") as first, _from(app, "192.0.2.11") as second:
            opened = [await first.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH) for _ in range(2)]
            assert [response.status_code for response in opened] == [200, 200]
            refused = await first.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
            assert refused.json()["id"] == 0 and "2 sessions" in refused.json()["error"]["message"]
            assert (await first.get("/sse", headers={"accept": "text/event-stream"})).status_code == 429
            # Another address is not affected; and the first gets room back when it ends a session.
            assert (await second.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 200
            ended = session_headers(opened[0].headers["mcp-session-id"])
            assert (await first.delete("/mcp", headers=ended)).status_code == 204
            assert (await first.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 200
            assert app.state.mcp.counts()["http"] == 3
            await app.state.mcp.sessions.shutdown()

    asyncio.run(scenario())


def test_an_ipv6_client_is_counted_by_its_64_prefix(make_runtime):
    runtime = make_runtime(http={"max_sessions_per_client": 1})
    app = build_http_app(runtime, runtime.settings)

    async def scenario() -> None:
        async with _from(app, "2001:db8::1") as one, _from(app, "2001:db8::2") as same, _from(
            app, "2001:db8:0:1::1"
        ) as other:
            assert (await one.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 200
            assert (await same.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 429
            assert (await other.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 200
            await app.state.mcp.sessions.shutdown()

    asyncio.run(scenario())


def test_loopback_clients_share_an_address_and_are_not_capped(make_runtime):
    """Several agents on the daemon's own host all connect from 127.0.0.1; only max_sessions bounds them."""
    runtime = make_runtime(http={"max_sessions_per_client": 1, "max_sessions": 4})
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        sessions = [open_session(client, daemon.url) for _ in range(4)]
        for session_id in sessions:
            listed = client.post("/mcp", json=request("tools/list"), headers=session_headers(session_id))
            assert listed.status_code == 200
        assert http_sessions(daemon) == 4


def test_a_client_at_its_cap_can_still_use_the_sessions_it_holds(make_runtime):
    runtime = make_runtime(http={"max_sessions_per_client": 1})
    app = build_http_app(runtime, runtime.settings)

    async def scenario() -> None:
        async with _from(app, "192.0.2.20") as client:
            opened = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            headers = session_headers(opened.headers["mcp-session-id"])
            initialized = await client.post("/mcp", json=notification("notifications/initialized"), headers=headers)
            assert initialized.status_code == 202
            listed = await client.post("/mcp", json=request("tools/list"), headers=headers)
            assert len(listed.json()["result"]["tools"]) == 3 + len(HANDLE_TOOLS)
            assert (await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).status_code == 429
            await app.state.mcp.sessions.shutdown()

    asyncio.run(scenario())
