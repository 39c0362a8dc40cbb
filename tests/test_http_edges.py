"""The HTTP daemon at its edges, with raw httpx: sessions, headers, auth, bodies, limits, vanishing clients.

Everything binds and connects to 127.0.0.1 only; the tools are the fake
scanners. Waiting is done on conditions (`wait_until`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from supervisor.config import ConfigError, Settings
from tests.fakes.install import running
from tests.helpers import process_alive, wait_until
from tests.http_support import (
    ACCEPT_BOTH,
    HANDLE_TOOLS,
    HANDSHAKE,
    INITIALIZE,
    MODERN,
    aevents,
    binary,
    envelope,
    events,
    fake_pids,
    idle,
    messages_in,
    modern,
    notification,
    open_session,
    parse_events,
    request,
    serve_process,
    session_headers,
)
from tests.runtimes import scan_calls
from transports.cli import main
from transports.exits import EXIT_ESCALATED, EXIT_SERVER_FAILED
from transports.http import server as server_module
from transports.http.daemon import HttpDaemon, run_http_daemon, with_http_options
from transports.http.security import InsecureBind

TOKEN = "http-edge-token-5e1d"
NO_SESSIONS = {"sse": 0, "http": 0, "http_stateless": 0}
HANG = {"nmap": {"scenario": {"mode": "hang"}}}


def counts(daemon: HttpDaemon) -> dict[str, int]:
    return daemon.mcp.counts()


def sse_session(stream: httpx.Response) -> tuple[str, Any]:
    """Read the endpoint event of an open `GET /sse`; returns the POST path and the event iterator."""
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    iterator = events(stream)
    first = next(iterator)
    assert first.event == "endpoint" and first.data.startswith("/messages/?session_id=")
    return first.data, iterator


# --- session ids ------------------------------------------------------------------------------


def test_legacy_posts_need_a_well_formed_known_session_id(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        ping = request("ping")
        assert client.post("/messages/", json=ping).status_code == 400
        assert client.post("/messages/?session_id=not-hex", json=ping).status_code == 400
        assert client.post("/messages/?session_id=" + "A" * 32, json=ping).status_code == 400
        unknown = client.post("/messages/?session_id=" + "0" * 32, json=ping)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == -32600
        with client.stream("GET", "/sse") as stream:
            endpoint, replies = sse_session(stream)
            assert client.post(endpoint, json=INITIALIZE).status_code == 202
            assert next(replies).json()["result"]["protocolVersion"] == HANDSHAKE
            assert client.post(endpoint, json=request("ping", request_id=7)).status_code == 202
            assert next(replies).json() == {"jsonrpc": "2.0", "id": 7, "result": {}}
            assert counts(daemon)["sse"] == 1
            # A Streamable HTTP request cannot borrow a legacy session, and vice versa.
            session_id = endpoint.rsplit("=", 1)[1]
            assert client.post("/mcp", json=request("ping"), headers=session_headers(session_id)).status_code == 404
        wait_until(lambda: counts(daemon) == NO_SESSIONS, what="the legacy session closed with its stream")
        assert client.post(endpoint, json=ping).status_code == 404


def test_streamable_sessions_are_required_then_unknown_once_deleted(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        missing = client.post("/mcp", json=request("tools/list"), headers=ACCEPT_BOTH)
        assert missing.status_code == 400 and "Mcp-Session-Id" in missing.json()["error"]["message"]
        assert missing.json()["id"] == 1
        for unknown in ("0" * 32, "garbage", "../../etc"):
            response = client.post("/mcp", json=request("tools/list"), headers=session_headers(unknown))
            assert response.status_code == 404, unknown
        session_id = open_session(client, daemon.url)
        listing = client.post("/mcp", json=request("tools/list"), headers=session_headers(session_id))
        assert listing.status_code == 200 and listing.headers["mcp-session-id"] == session_id
        names = [tool["name"] for tool in listing.json()["result"]["tools"]]
        assert names == ["nmap", "masscan", "gobuster", *HANDLE_TOOLS]
        assert client.delete("/mcp", headers=session_headers(session_id)).status_code == 204
        assert client.post("/mcp", json=request("ping"), headers=session_headers(session_id)).status_code == 404
        assert client.delete("/mcp", headers=session_headers(session_id)).status_code == 404
        assert client.delete("/mcp", headers=ACCEPT_BOTH).status_code == 400
        assert client.put("/mcp", json={}).status_code == 405
    assert counts(daemon) == NO_SESSIONS


def test_idle_sessions_expire_and_their_ids_are_then_unknown(served):
    _, daemon = served(http={"session_idle_sec": 0.3})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        with client.stream("GET", "/sse") as stream:
            endpoint, replies = sse_session(stream)
            wait_until(lambda: counts(daemon) == NO_SESSIONS, what="both sessions expired")
            assert list(replies) == []  # the expired legacy session's stream simply ends
        assert client.post("/mcp", json=request("ping"), headers=session_headers(session_id)).status_code == 404
        assert client.post(endpoint, json=request("ping")).status_code == 404


def test_the_session_table_is_bounded(served):
    _, daemon = served(http={"max_sessions": 2})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        first = open_session(client, daemon.url)
        # Both sessions hold a stream, so neither may be closed to make room.
        with client.stream("GET", "/sse") as stream, client.stream("GET", "/mcp", headers=session_headers(first)):
            _, replies = sse_session(stream)  # keep the iterator: dropping it would close the stream
            refused = client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert refused.json()["id"] == 0 and "2 sessions" in refused.json()["error"]["message"]
            assert client.get("/sse").status_code == 503
            assert client.delete("/mcp", headers=session_headers(first)).status_code == 204
            open_session(client, daemon.url)
            assert counts(daemon) == {"sse": 1, "http": 1, "http_stateless": 0}
            del replies
    assert wait_until(lambda: counts(daemon)["sse"] == 0)


# --- headers ----------------------------------------------------------------------------------


def test_the_protocol_version_header_may_name_any_version_we_speak(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        headers = session_headers(session_id)
        unknown = client.post(
            "/mcp", json=request("ping", request_id="p1"), headers={**headers, "mcp-protocol-version": "1999-01-01"}
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == -32022
        assert unknown.json()["id"] == "p1"
        assert HANDSHAKE in unknown.json()["error"]["data"]["supported"]
        # Another version this server speaks is not the negotiated one, but it is neither invalid nor
        # unsupported: the request is served, at the version the session negotiated.
        older = {**headers, "mcp-protocol-version": "2025-03-26"}
        listed = client.post("/mcp", json=request("tools/list", request_id=2), headers=older)
        assert listed.status_code == 200 and listed.json()["id"] == 2
        assert "outputSchema" in listed.json()["result"]["tools"][0]  # a 2025-11-25 field, as negotiated
        without = {k: v for k, v in headers.items() if k != "mcp-protocol-version"}
        assert client.post("/mcp", json=request("ping"), headers=without).json()["result"] == {}
        assert client.post("/mcp", json=request("ping"), headers=headers).json()["result"] == {}
        assert client.get("/mcp", headers={**headers, "mcp-protocol-version": "1999-01-01"}).status_code == 400
        with client.stream("GET", "/mcp", headers=older) as stream:
            assert stream.status_code == 200
            assert client.delete("/mcp", headers=older).status_code == 204
        # Refusals name the request they refuse whenever its id could be read.
        gone = client.post("/mcp", json=request("ping", request_id="p2"), headers=headers)
        assert gone.status_code == 404 and gone.json()["id"] == "p2"


def test_three_concurrent_posts_at_another_supported_version_are_all_served(served):
    """What the conformance scenario server-sse-multiple-streams does after its handshake."""
    _, daemon = served()

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            initialized = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            headers = {**session_headers(initialized.headers["mcp-session-id"]), "mcp-protocol-version": "2025-03-26"}
            posts = [client.post("/mcp", json=request("tools/list", request_id=1000 + i), headers=headers)
                     for i in range(3)]
            return list(await asyncio.gather(*posts))

    responses = asyncio.run(scenario())
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert [response.json()["id"] for response in responses] == [1000, 1001, 1002]


def test_modern_requests_repeat_their_envelope_in_the_routing_headers(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        body, headers = modern("tools/list")
        listed = client.post("/mcp", json=body, headers=headers)
        assert listed.status_code == 200 and "mcp-session-id" not in listed.headers
        assert len(listed.json()["result"]["tools"]) == 3 + len(HANDLE_TOOLS)
        discover, discover_headers = modern("server/discover")
        assert MODERN in client.post("/mcp", json=discover, headers=discover_headers).json()["result"][
            "supportedVersions"
        ]
        no_version = {k: v for k, v in headers.items() if k != "mcp-protocol-version"}
        for bad in (no_version, {**headers, "mcp-method": "tools/call"}):
            refused = client.post("/mcp", json=body, headers=bad)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == -32020, bad
        call, call_headers = modern("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}})
        refused = client.post("/mcp", json=call, headers={**call_headers, "mcp-name": "masscan"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == -32020
        twice = [*headers.items(), ("mcp-method", "tools/list")]
        assert client.post("/mcp", json=body, headers=twice).json()["error"]["code"] == -32020
        # Errors a 2026-07-28 request gets as JSON carry the status its code maps to.
        unknown, unknown_headers = modern("prompts/list")
        assert client.post("/mcp", json=unknown, headers=unknown_headers).status_code == 404
        bad_params, bad_headers = modern("tools/call", {"name": "nmap", "arguments": 7})
        assert client.post("/mcp", json=bad_params, headers=bad_headers).status_code == 400
        # Notifications are acknowledged; a modern client has no session to GET or DELETE.
        note = notification("notifications/cancelled", {"requestId": 1, "_meta": envelope()})
        at_modern = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN}
        assert client.post("/mcp", json=note, headers=at_modern).status_code == 202
        assert client.get("/mcp", headers=at_modern).status_code == 405
        # A modern request posted inside a handshake session is refused by the dispatcher, not served.
        session_id = open_session(client, daemon.url)
        crossed = client.post("/mcp", json=body, headers={**session_headers(session_id)})
        assert crossed.json()["error"]["code"] == -32600
    assert counts(daemon)["http_stateless"] == 0


def test_accept_and_content_type_rules(served):
    _, daemon = served(tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 0.4, "steps": 2}}})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        body, headers = modern("tools/list")
        assert client.post("/mcp", json=body, headers={**headers, "accept": "text/html"}).status_code == 406
        assert client.post("/mcp", json=body, headers={**headers, "accept": "application/json;q=0"}).status_code == 406
        assert client.post("/mcp", content=b"{}", headers={**headers, "content-type": "text/plain"}).status_code == 415
        assert client.get("/sse", headers={"accept": "application/json"}).status_code == 406
        # No Accept at all accepts anything (RFC 9110).
        assert client.post("/mcp", json=body, headers={k: v for k, v in headers.items() if k != "accept"}).is_success
        call, call_headers = modern("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}})
        call["params"]["_meta"]["progressToken"] = "p"
        # A client reading events gets the progress first, then the result, on one stream.
        streamed = client.post("/mcp", json=call, headers=call_headers)
        assert streamed.headers["content-type"].startswith("text/event-stream")
        messages = [event.json() for event in parse_events(streamed.text)]
        assert [m["params"]["progress"] for m in messages[:-1]] == [0.0, 33.33, 66.67, 100.0]
        assert messages[-1]["id"] == 1 and messages[-1]["result"]["isError"] is False
        # A client reading only JSON gets the result alone.
        plain = client.post("/mcp", json=call, headers={**call_headers, "accept": "application/json"})
        assert plain.headers["content-type"] == "application/json" and plain.json()["result"]["isError"] is False
        # A client reading only events gets even a quick answer as an event.
        only_events = client.post("/mcp", json=body, headers={**headers, "accept": "text/event-stream"})
        assert only_events.headers["content-type"].startswith("text/event-stream")
        assert len(parse_events(only_events.text)[0].json()["result"]["tools"]) == 3 + len(HANDLE_TOOLS)


def test_initialize_from_a_client_reading_only_events_is_answered_as_an_event(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        answered = client.post("/mcp", json=INITIALIZE, headers={"accept": "text/event-stream"})
        assert answered.status_code == 200
        assert answered.headers["content-type"].startswith("text/event-stream")
        (event,) = parse_events(answered.text)
        assert event.json()["id"] == 0 and event.json()["result"]["protocolVersion"] == HANDSHAKE
        session_id = answered.headers["mcp-session-id"]
        listed = client.post("/mcp", json=request("tools/list"), headers=session_headers(session_id))
        assert len(listed.json()["result"]["tools"]) == 3 + len(HANDLE_TOOLS)
        bad_initialize = request("initialize", {"protocolVersion": 7})
        refused = client.post("/mcp", json=bad_initialize, headers={"accept": "text/event-stream"})
        assert refused.headers["content-type"].startswith("text/event-stream")
        assert parse_events(refused.text)[0].json()["error"]["code"] == -32602
        assert "mcp-session-id" not in refused.headers
    assert counts(daemon)["http"] == 1


def test_a_request_reusing_an_in_flight_id_is_refused_without_a_reply_carrying_that_id(served):
    runtime, daemon = served(tools=HANG)
    nmap = binary(runtime, "nmap")
    call = {"name": "nmap", "arguments": {"target": "10.0.0.5"}}

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            session_id = (await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)).headers["mcp-session-id"]
            headers = {**session_headers(session_id), "accept": "application/json"}
            calling = client.post("/mcp", json=request("tools/call", call, "scan"), headers=headers)
            first = asyncio.ensure_future(calling)
            await asyncio.to_thread(wait_until, lambda: running(scan_calls(nmap)), what="the fake running")
            refusals = [
                (await client.post("/mcp", json=request(method, params, "scan"), headers=headers)).json()
                for method, params in (("tools/call", call), ("ping", None))
            ]
            assert (await client.delete("/mcp", headers=headers)).status_code == 204
            return refusals, [(await first).json()]

    refusals, answers = asyncio.run(scenario())
    assert [refusal["id"] for refusal in refusals] == [None, None]
    assert all(refusal["error"]["code"] == -32600 for refusal in refusals)
    # The call itself was not disturbed: its one answer (cancelled by the DELETE) carries its id.
    assert answers[0]["id"] == "scan"
    assert answers[0]["result"]["structuredContent"]["error"]["error_type"] == "cancelled"
    assert len(scan_calls(nmap)) == 1


def test_over_legacy_sse_a_reused_in_flight_id_is_refused_with_a_null_id(served):
    runtime, daemon = served(tools=HANG)
    nmap = binary(runtime, "nmap")
    call = {"name": "nmap", "arguments": {"target": "10.0.0.5"}}
    with httpx.Client(base_url=daemon.url, timeout=10) as client, client.stream("GET", "/sse") as stream:
        endpoint, replies = sse_session(stream)
        assert client.post(endpoint, json=INITIALIZE).status_code == 202
        assert next(replies).json()["id"] == 0
        assert client.post(endpoint, json=request("tools/call", call, "scan")).status_code == 202
        wait_until(lambda: running(scan_calls(nmap)), what="the fake running")
        assert client.post(endpoint, json=request("ping", None, "scan")).status_code == 202
        refusal = next(replies).json()
        assert refusal["id"] is None and refusal["error"]["code"] == -32600
        cancel = notification("notifications/cancelled", {"requestId": "scan"})
        assert client.post(endpoint, json=cancel).status_code == 202
        wait_until(lambda: idle(runtime))


def test_the_standalone_stream_is_single_and_ends_with_its_session(served):
    _, daemon = served()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        assert client.get("/mcp", headers=ACCEPT_BOTH).status_code == 400
        session_id = open_session(client, daemon.url)
        with client.stream("GET", "/mcp", headers=session_headers(session_id)) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["mcp-session-id"] == session_id
            assert client.get("/mcp", headers=session_headers(session_id)).status_code == 409
            assert client.delete("/mcp", headers=session_headers(session_id)).status_code == 204
            assert list(events(stream)) == []


# --- who may connect --------------------------------------------------------------------------


def test_a_foreign_origin_is_refused_on_every_mcp_endpoint(served):
    _, daemon = served()
    evil = {"origin": "http://evil.example"}
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        assert client.post("/mcp", json=INITIALIZE, headers={**ACCEPT_BOTH, **evil}).status_code == 403
        assert client.get("/sse", headers=evil).status_code == 403
        assert client.post("/messages/?session_id=" + "0" * 32, json=INITIALIZE, headers=evil).status_code == 403
        local = client.post("/mcp", json=INITIALIZE, headers={**ACCEPT_BOTH, "origin": "http://localhost:5173"})
        assert local.status_code == 200
    assert counts(daemon)["http"] == 1


def test_a_configured_token_is_required_for_mcp_but_not_for_probes(served):
    _, daemon = served(auth={"token": TOKEN})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
            assert client.post("/mcp", json=INITIALIZE, headers={**ACCEPT_BOTH, **headers}).status_code == 401
            assert client.get("/sse", headers=headers).status_code == 401
            assert client.get("/status", headers=headers).status_code == 401
        assert TOKEN not in client.post("/mcp", json=INITIALIZE, headers={"authorization": "Bearer x"}).text
        assert client.get("/livez").status_code == 200
        good = {"authorization": f"Bearer {TOKEN}"}
        assert client.post("/mcp", json=INITIALIZE, headers={**ACCEPT_BOTH, **good}).status_code == 200
        assert client.get("/status", headers=good).json()["sessions"]["http"] == 1


def test_binding_beyond_loopback_without_a_token_is_refused_before_anything_listens(make_runtime, capsys, monkeypatch):
    monkeypatch.setattr("transports.logs.configure_logging", lambda *args, **kwargs: None)  # keep pytest's handlers
    runtime = make_runtime()
    with pytest.raises(InsecureBind):
        HttpDaemon.start(runtime, runtime.settings, host="0.0.0.0", port=0)
    with pytest.raises(InsecureBind):
        run_http_daemon(Settings(), host="0.0.0.0", port=0)  # refused before a runtime starts
    assert main(["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refuses to start" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        with_http_options(Settings(), port=70000)


# --- bodies -----------------------------------------------------------------------------------


def test_oversized_and_malformed_bodies_are_refused_and_the_server_keeps_serving(served):
    _, daemon = served(http={"max_body_bytes": 2048})
    big = request("ping", {"pad": "x" * 4096})
    with httpx.Client(base_url=daemon.url, timeout=10) as client, client.stream("GET", "/sse") as stream:
        endpoint, replies = sse_session(stream)
        session_id = open_session(client, daemon.url)
        for url, headers in (("/mcp", session_headers(session_id)), (endpoint, {})):
            too_big = client.post(url, json=big, headers=headers)
            assert too_big.status_code == 413, url
            assert too_big.json()["error"]["data"] == {"limit": 2048}
            chunks = iter([b"[" + b" " * 1500, b" " * 1500 + b"]"])  # no Content-Length: counted as it arrives
            chunked = client.post(url, content=chunks, headers={**headers, "content-type": "application/json"})
            assert chunked.status_code == 413, url
            for garbage in (b"{not json", b"\xff\xfe", b"NaN", b""):
                refused = client.post(url, content=garbage, headers={**headers, "content-type": "application/json"})
                assert refused.status_code in (400, 413), (url, garbage)
                if refused.status_code == 400:
                    assert refused.json()["error"]["code"] == -32700 and refused.json()["id"] is None
        # Decodable but invalid JSON-RPC is answered by the dispatcher, on the stream for legacy sessions.
        assert client.post(endpoint, json=[1]).status_code == 202
        assert client.post(endpoint, json=INITIALIZE).status_code == 202
        replies_seen = [next(replies).json(), next(replies).json()]
        assert replies_seen[0]["error"]["code"] == -32600
        assert replies_seen[1]["result"]["protocolVersion"] == HANDSHAKE
        assert client.post(endpoint, json=request("ping", request_id="after")).status_code == 202
        assert next(replies).json()["id"] == "after"
        ok = client.post("/mcp", json=request("tools/list"), headers=session_headers(session_id))
        assert ok.status_code == 200 and len(ok.json()["result"]["tools"]) == 3 + len(HANDLE_TOOLS)


# --- cancellation and lifetimes ---------------------------------------------------------------


def test_delete_cancels_the_sessions_running_calls(served):
    runtime, daemon = served(tools=HANG)
    nmap = binary(runtime, "nmap")

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            response = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            session_id = response.headers["mcp-session-id"]
            call = request("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}}, request_id="scan")
            pending = asyncio.ensure_future(client.post("/mcp", json=call, headers=session_headers(session_id)))
            await asyncio.to_thread(wait_until, lambda: running(scan_calls(nmap)), what="the fake running")
            assert (await client.delete("/mcp", headers=session_headers(session_id))).status_code == 204
            answer = await pending
            assert answer.status_code == 200
            return messages_in(answer.text)[-1] if answer.headers[
                "content-type"
            ].startswith("text/event-stream") else answer.json()

    reply = asyncio.run(scenario())
    # Whoever still listens gets the call's cancelled outcome.
    assert reply["id"] == "scan" and reply["result"]["structuredContent"]["error"]["error_type"] == "cancelled"
    pid = scan_calls(nmap)[0]["pid"]
    wait_until(lambda: not process_alive(pid), what="the fake killed")
    wait_until(lambda: idle(runtime))
    assert counts(daemon) == NO_SESSIONS and daemon.mcp.sessions.in_progress == 0


def test_status_counts_sessions_and_stateless_requests_in_progress(served):
    runtime, daemon = served(tools=HANG)

    async def scenario() -> None:
        async with (
            httpx.AsyncClient(base_url=daemon.url, timeout=10) as client,
            client.stream("GET", "/sse") as stream,
        ):
            iterator = aevents(stream)
            assert (await anext(iterator)).event == "endpoint"
            await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
            call, headers = modern("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}})
            pending = asyncio.ensure_future(client.post("/mcp", json=call, headers=headers))
            await asyncio.to_thread(wait_until, lambda: counts(daemon)["http_stateless"] == 1)
            status = (await client.get("/status")).json()
            assert status["sessions"] == {"sse": 1, "http": 1, "http_stateless": 1}
            pending.cancel()  # the modern client walks away: its request is cancelled
            await asyncio.gather(pending, return_exceptions=True)
            await asyncio.to_thread(wait_until, lambda: counts(daemon)["http_stateless"] == 0)

    asyncio.run(scenario())
    wait_until(lambda: idle(runtime))
    assert all(not process_alive(pid) for pid in fake_pids(runtime))


def test_two_hundred_clients_that_vanish_mid_call_leave_nothing_behind(served):
    """Legacy SSE, handshake and 2026-07-28 clients start a hanging scan each, then drop their connections.

    The handshake clients (2025-11-25) hold event ids, so their calls wait `resume_window_sec` for them first.
    """
    runtime, daemon = served(
        tools={"nmap": {"concurrency": 8, "max_queue": 300, "scenario": {"mode": "hang"}}},
        # Idle sessions must expire within the final wait, but not before a loaded machine gets to their first POST.
        http={"max_sessions": 300, "session_idle_sec": 10.0, "resume_window_sec": 0.5},
    )
    kinds = ["sse"] * 70 + ["http"] * 65 + ["modern"] * 65
    call = {"name": "nmap", "arguments": {"target": "10.0.0.5"}}

    async def client_that_vanishes(client: httpx.AsyncClient, kind: str, index: int, gate: asyncio.Semaphore) -> None:
        async with gate:  # connect gradually, so the listen backlog never overflows
            if kind == "sse":
                async with client.stream("GET", "/sse") as stream:
                    iterator = aevents(stream)
                    endpoint = (await anext(iterator)).data
                    for message in (INITIALIZE, notification("notifications/initialized"), request("tools/call", call)):
                        assert (await client.post(endpoint, json=message)).status_code == 202
                    gate.release()
                    try:
                        await asyncio.Event().wait()  # hold the stream until cancelled
                    finally:
                        await gate.acquire()
            elif kind == "http":
                response = await client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
                headers = session_headers(response.headers["mcp-session-id"])
                gate.release()
                try:
                    await client.post("/mcp", json=request("tools/call", call), headers=headers)
                finally:
                    await gate.acquire()
            else:
                body, headers = modern("tools/call", call, request_id=index)
                gate.release()
                try:
                    await client.post("/mcp", json=body, headers=headers)
                finally:
                    await gate.acquire()

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(32)
            tasks = [asyncio.ensure_future(client_that_vanishes(client, kind, i, gate)) for i, kind in enumerate(kinds)]

            def all_admitted() -> bool:
                nmap = runtime.status().tools["nmap"]
                return nmap.in_flight + nmap.queued == len(kinds)

            await asyncio.to_thread(wait_until, all_admitted, 30.0, 0.02, "all 200 calls running or queued")
            assert counts(daemon) == {"sse": 70, "http": 65, "http_stateless": 65}
            for task in tasks:
                task.cancel()  # every client drops its connections mid-call
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results

    asyncio.run(scenario())
    wait_until(lambda: idle(runtime), 30.0, what="no call running or queued")
    wait_until(lambda: counts(daemon) == NO_SESSIONS, 30.0, what="every session closed or expired")
    assert daemon.mcp.sessions.in_progress == 0
    pids = fake_pids(runtime)
    assert 8 <= len(pids) <= len(kinds)
    wait_until(lambda: not any(process_alive(pid) for pid in pids), what="every fake gone")
    assert runtime.status().tools["nmap"].calls.get("cancelled", 0) == len(kinds)


# --- the daemon's own life --------------------------------------------------------------------


def test_the_daemon_stops_with_status_4_when_its_server_dies(make_runtime):
    runtime = make_runtime()
    daemon = HttpDaemon.start(runtime, runtime.settings, host="127.0.0.1", port=0)
    try:
        assert not daemon.wait(0)
        assert daemon.server is not None
        daemon.server.ref.tell(server_module._Exited(RuntimeError("uvicorn crashed")))
        assert daemon.wait(10)
        assert daemon.exit_status == EXIT_SERVER_FAILED and "unexpectedly" in (daemon.reason or "")
    finally:
        assert daemon.stop(grace=0) == EXIT_SERVER_FAILED


def test_the_daemon_stops_with_status_3_when_the_runtime_escalates(make_runtime):
    runtime = make_runtime()
    daemon = HttpDaemon.start(runtime, runtime.settings, host="127.0.0.1", port=0)
    try:
        runtime.escalation_reason = "nmap exceeded its restart intensity"
        runtime.escalated.set()
        assert daemon.wait(10)
        assert daemon.exit_status == EXIT_ESCALATED
    finally:
        daemon.stop(grace=0)


def test_serve_over_http_from_the_command_line_until_sigterm(tmp_path):
    unused = tmp_path / "unused.sock"
    with serve_process(tmp_path, config=["[http]", f'ops_socket = "{unused}"']) as served:
        with served.ops_client() as client:
            assert client.get("/status").json()["sessions"] == NO_SESSIONS
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(20) == 0, served.log.read_text()
    assert not served.ops.exists() and not unused.exists()
