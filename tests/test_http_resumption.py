"""Resumable Streamable HTTP streams (sessions at 2025-11-25): event ids, priming, replay after Last-Event-ID.

A real daemon on 127.0.0.1 in front of the fake scanners, driven with raw
httpx and with the official SDK client, whose transport resumes a stream
that ends before its reply. Waiting is on conditions, never on sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.fakes.install import running
from tests.helpers import process_alive, wait_until
from tests.http_support import (
    ACCEPT_BOTH,
    ARGUMENTS,
    HANDSHAKE,
    INITIALIZE,
    TIMEOUT,
    Event,
    binary,
    events,
    idle,
    messages_in,
    notification,
    open_session,
    parse_events,
    request,
    session_headers,
)
from tests.runtimes import scan_calls
from transports.http.exchange import RECONNECT_MS
from transports.http.sessions import SessionKind

SLOW = {"nmap": {"scenario": {"mode": "slow", "delay_sec": 1.0, "steps": 4}}}


def scan(request_id: Any, progress_token: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "nmap", "arguments": ARGUMENTS["nmap"]}
    if progress_token is not None:
        params["_meta"] = {"progressToken": progress_token}
    return request("tools/call", params, request_id)


def resume(client: httpx.Client, session_id: str, last_event_id: str) -> httpx.Response:
    return client.get("/mcp", headers={**session_headers(session_id), "last-event-id": last_event_id})


def progress_values(messages: list[dict[str, Any]]) -> list[float]:
    return [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"]


def test_a_call_streams_from_a_priming_event_and_every_event_names_its_stream(served):
    _, daemon = served(tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 0.2, "steps": 2}}})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        first = client.post("/mcp", json=scan("a", "p"), headers=session_headers(session_id))
        second = client.post("/mcp", json=scan("b"), headers=session_headers(session_id))
        ping = client.post("/mcp", json=request("ping"), headers=session_headers(session_id))
    assert first.headers["content-type"].startswith("text/event-stream")
    priming, *rest = parse_events(first.text)
    assert priming.priming and priming.retry == RECONNECT_MS
    stream, _, number = priming.event_id.partition("-")
    assert number == "0"
    assert [event.id for event in rest] == [f"{stream}-{n}" for n in range(1, len(rest) + 1)]
    assert progress_values([event.json() for event in rest]) == [0.0, 33.33, 66.67, 100.0]
    assert rest[-1].json()["id"] == "a" and rest[-1].json()["result"]["isError"] is False
    # A call without progress streams too (it may run for minutes), on a stream of its own.
    second_priming, reply = parse_events(second.text)
    assert second_priming.priming and second_priming.event_id.split("-")[0] != stream
    assert reply.id == second_priming.event_id.split("-")[0] + "-1" and reply.json()["id"] == "b"
    # Quick answers are plain JSON as before.
    assert ping.headers["content-type"] == "application/json" and ping.json()["result"] == {}


def test_older_sessions_and_json_only_clients_get_no_event_ids(served):
    _, daemon = served(tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 0.2, "steps": 2}}})
    older = request(
        "initialize",
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        request_id=0,
    )
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        response = client.post("/mcp", json=older, headers=ACCEPT_BOTH)
        headers = {**session_headers(response.headers["mcp-session-id"]), "mcp-protocol-version": "2025-06-18"}
        client.post("/mcp", json=notification("notifications/initialized"), headers=headers)
        streamed = client.post("/mcp", json=scan(1, "p"), headers=headers)
        assert all(event.id is None and event.retry is None for event in parse_events(streamed.text))
        assert progress_values(messages_in(streamed.text)) == [0.0, 33.33, 66.67, 100.0]
        session_id = open_session(client, daemon.url)
        plain = client.post(
            "/mcp", json=scan(2, "p"), headers={**session_headers(session_id), "accept": "application/json"}
        )
        assert plain.headers["content-type"] == "application/json" and plain.json()["id"] == 2


def test_a_dropped_stream_resumes_after_its_last_event_id_and_nothing_is_lost(served):
    runtime, daemon = served(tools=SLOW)
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        with client.stream("POST", "/mcp", json=scan("scan", "p"), headers=session_headers(session_id)) as posted:
            stream = events(posted)
            priming, first = next(stream), next(stream)
        # The connection is gone; the scan is not: it runs to the end, its events kept for the client.
        wait_until(lambda: idle(runtime), what="the scan finished")
        assert runtime.status().tools["nmap"].calls.get("cancelled") is None
        resumed = resume(client, session_id, first.event_id)
        assert resumed.status_code == 200 and resumed.headers["content-type"].startswith("text/event-stream")
        replayed = parse_events(resumed.text)
        # Delivered to the end: the stream is forgotten, and a second resume finds nothing left.
        again = resume(client, session_id, first.event_id)
        assert again.status_code == 400 and again.json()["error"]["code"] == -32600
    assert progress_values([first.json()]) == [0.0]
    assert progress_values([event.json() for event in replayed[:-1]]) == [20.0, 40.0, 60.0, 80.0, 100.0]
    stream_number = priming.event_id.split("-")[0]
    assert [event.id for event in replayed] == [f"{stream_number}-{n}" for n in range(2, 2 + len(replayed))]
    assert replayed[-1].json()["id"] == "scan" and replayed[-1].json()["result"]["isError"] is False


def test_a_resume_takes_the_stream_over_from_a_connection_still_open(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        with client.stream("POST", "/mcp", json=scan("scan"), headers=session_headers(session_id)) as posted:
            stream = events(posted)
            priming = next(stream)
            wait_until(lambda: running(scan_calls(binary(runtime, "nmap"))), what="the fake running")
            with client.stream(
                "GET", "/mcp", headers={**session_headers(session_id), "last-event-id": priming.event_id}
            ) as resumed:
                assert resumed.status_code == 200
                assert list(stream) == []  # the old connection was ended, without the reply
                release.touch()
                (reply,) = list(events(resumed))
    assert reply.json()["id"] == "scan" and reply.json()["result"]["isError"] is False
    assert reply.id == priming.event_id.split("-")[0] + "-1"


def test_a_last_event_id_naming_no_stream_of_this_session_is_refused(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}})
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        mine, other = open_session(client, daemon.url), open_session(client, daemon.url)
        with client.stream("POST", "/mcp", json=scan("scan"), headers=session_headers(mine)) as posted:
            stream = events(posted)
            priming = next(stream)
            for bad in ("garbage", "1-", "01-0", "99-0", priming.event_id.split("-")[0] + "-7", "1-0-0"):
                refused = resume(client, mine, bad)
                assert refused.status_code == 400 and refused.json()["error"]["code"] == -32600, bad
            # Another session's ids mean nothing here: its streams are never replayed to this one.
            assert resume(client, other, priming.event_id).status_code == 400
            assert resume(client, "0" * 32, priming.event_id).status_code == 404
            release.touch()
            assert [event.json()["id"] for event in stream] == ["scan"]
    wait_until(lambda: idle(runtime))


def test_a_stream_nobody_resumes_has_its_call_cancelled(served):
    runtime, daemon = served(tools={"nmap": {"scenario": {"mode": "hang"}}}, http={"resume_window_sec": 0.3})
    nmap = binary(runtime, "nmap")
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        with client.stream("POST", "/mcp", json=scan("scan"), headers=session_headers(session_id)) as posted:
            stream = events(posted)
            assert next(stream).priming
            wait_until(lambda: running(scan_calls(nmap)), what="the fake running")
    wait_until(lambda: not process_alive(scan_calls(nmap)[0]["pid"]), what="the fake killed")
    wait_until(lambda: idle(runtime))
    assert runtime.status().tools["nmap"].calls.get("cancelled") == 1


def test_the_server_closes_a_long_stream_with_a_retry_and_the_client_resumes_it(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}}, http={"stream_close_sec": 0.2}
    )
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        session_id = open_session(client, daemon.url)
        closed = client.post("/mcp", json=scan("scan"), headers=session_headers(session_id))
        (priming,) = parse_events(closed.text)  # the stream ended before the reply ...
        assert priming.priming and closed.text.endswith(f"retry: {RECONNECT_MS}\r\n\r\n")  # ... saying when to resume
        wait_until(lambda: running(scan_calls(binary(runtime, "nmap"))), what="the fake running")
        release.touch()
        # Each resumed connection is closed the same way; the client resumes from the newest id it holds.
        last_id, replayed = priming.event_id, []
        for _ in range(100):
            resumed = resume(client, session_id, last_id)
            assert resumed.status_code == 200
            replayed += messages_in(resumed.text)
            last_id = ([event.event_id for event in parse_events(resumed.text)] or [last_id])[-1]
            if replayed:
                break
    assert [m["id"] for m in replayed] == ["scan"]
    assert runtime.status().tools["nmap"].calls.get("cancelled") is None


def test_the_sdk_client_resumes_streams_the_server_closes_and_gets_every_progress_and_the_result(served):
    _, daemon = served(
        tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 2.0, "steps": 4}}}, http={"stream_close_sec": 0.3}
    )
    resumed_from: list[str] = []
    seen: list[float] = []

    async def record(request: httpx2.Request) -> None:
        if request.method == "GET" and "last-event-id" in request.headers:
            resumed_from.append(request.headers["last-event-id"])

    async def scenario() -> Any:
        http_client = httpx2.AsyncClient(timeout=httpx2.Timeout(TIMEOUT, read=300), event_hooks={"request": [record]})
        async with http_client:
            transport = streamable_http_client(daemon.url + "/mcp", http_client=http_client)
            async with Client(transport, mode="legacy", read_timeout_seconds=TIMEOUT) as client:
                assert client.protocol_version == HANDSHAKE

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(progress)

                return await client.call_tool("nmap", ARGUMENTS["nmap"], progress_callback=on_progress)

    result = asyncio.run(scenario())
    assert not result.is_error, result
    assert result.structured_content["ok"] is True
    assert seen == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert resumed_from, "the client never had to resume"


# --- a reply awaiting its client holds the session -----------------------------------------------


def finished_while_away(runtime: Any, daemon: Any, client: httpx.Client, session_id: str, release: Any) -> Event:
    """Start a scan on `session_id`, leave its stream after the priming event, let the scan finish; the
    priming event is returned. The reply now waits, undelivered, for the client to come back."""
    with client.stream("POST", "/mcp", json=scan("scan"), headers=session_headers(session_id)) as posted:
        priming = next(events(posted))
        assert priming.priming
    session = daemon.mcp.sessions.get(session_id, SessionKind.HTTP)
    stream, _ = session.resumable.find(priming.event_id)
    wait_until(lambda: stream.reader is None, what="the server saw the client leave")
    release.touch()
    wait_until(lambda: stream.finished and not session.busy, what="the scan finished, its reply undelivered")
    wait_until(lambda: idle(runtime))
    return priming


def the_reply_in(resumed: httpx.Response) -> dict[str, Any]:
    assert resumed.status_code == 200, resumed.text
    (reply,) = messages_in(resumed.text)
    assert reply["id"] == "scan" and reply["result"]["isError"] is False
    return reply


def test_a_full_table_evicts_another_session_not_one_whose_reply_awaits_its_client(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}}, http={"max_sessions": 2}
    )
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        away = open_session(client, daemon.url)
        priming = finished_while_away(runtime, daemon, client, away, release)
        other = open_session(client, daemon.url)  # used, and more recently active than the one away
        assert client.post("/mcp", json=request("ping"), headers=session_headers(other)).status_code == 200
        newcomer = client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
        assert newcomer.status_code == 200
        assert client.post("/mcp", json=request("ping"), headers=session_headers(other)).status_code == 404
        the_reply_in(resume(client, away, priming.event_id))
    assert runtime.status().tools["nmap"].calls.get("cancelled") is None


def test_when_every_other_session_is_held_the_newcomer_waits_until_the_reply_is_delivered(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}}, http={"max_sessions": 1}
    )
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        away = open_session(client, daemon.url)
        priming = finished_while_away(runtime, daemon, client, away, release)
        refused = client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        the_reply_in(resume(client, away, priming.event_id))
        # Delivered: the session holds nothing any more, and makes room for the newcomer.
        assert client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH).status_code == 200
        assert client.post("/mcp", json=request("ping"), headers=session_headers(away)).status_code == 404


def test_a_reply_nobody_comes_back_for_holds_its_session_only_for_the_resume_window(served, tmp_path):
    release = tmp_path / "release"
    runtime, daemon = served(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}},
        http={"max_sessions": 1, "resume_window_sec": 0.3},
    )
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        away = open_session(client, daemon.url)
        priming = finished_while_away(runtime, daemon, client, away, release)
        wait_until(
            lambda: client.post("/mcp", json=INITIALIZE, headers=ACCEPT_BOTH).status_code == 200,
            what="the resume window passed and the session made room",
        )
        assert resume(client, away, priming.event_id).status_code == 404
