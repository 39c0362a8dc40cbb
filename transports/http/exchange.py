"""One HTTP exchange at the ASGI level: a bounded body in, JSON or events out, and the client leaving.

On raw ASGI `receive`/`send`, so a body read stops at a byte limit instead of buffering, a client
that leaves is noticed while its call still runs, and event-stream frames go out as they happen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from transports.mcp import jsonrpc

__all__ = [
    "KEEPALIVE_FRAME",
    "RECONNECT_MS",
    "RETRY_AFTER_SEC",
    "SEND_TIMEOUT_SEC",
    "AsgiEndpoint",
    "BodyTooLarge",
    "ClientGone",
    "busy_response",
    "client_address",
    "event_frame",
    "event_stream_response",
    "json_response",
    "priming_frame",
    "read_body",
    "retry_frame",
    "rpc_error_response",
    "send_chunk",
    "start_event_stream",
    "wait_disconnect",
]

_SSE_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream",
    "cache-control": "no-store",
    "x-accel-buffering": "no",
}

KEEPALIVE_FRAME = b": keepalive\r\n\r\n"

RETRY_AFTER_SEC = "5"
"""The Retry-After a client is given when the server is too busy, or shutting down, to take its message."""

RECONNECT_MS = 500
"""The `retry` a resumable event stream announces: how long a client waits before it resumes a closed stream."""

SEND_TIMEOUT_SEC = 30.0
"""How long one write to an event stream may wait for a client that stopped reading before it is dropped."""


class AsgiEndpoint:
    """Mounts a raw ASGI handler on a Starlette `Route`.

    Starlette wraps plain functions and bound methods as request/response
    endpoints; a handler that streams, or watches the connection, needs the
    raw `receive`/`send`, which Starlette passes through to any other callable.
    """

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class BodyTooLarge(Exception):
    """The request body is over the configured limit; answered 413 without reading the rest."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive, limit: int, declared_length: str | None = None) -> bytes:
    """The whole body, refusing (before reading further) anything over `limit` bytes."""
    if declared_length is not None:
        try:
            if int(declared_length) > limit:
                raise BodyTooLarge(limit)
        except ValueError:
            pass  # a nonsense Content-Length is the server's problem to reject, not ours to trust
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body", False):
            return bytes(body)


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def json_response(
    body: dict[str, Any] | list[dict[str, Any]], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON body encoded the way every JSON-RPC message is: ASCII, one line."""
    try:
        content = jsonrpc.encode(body)
    except (TypeError, ValueError):
        content = json.dumps(body, ensure_ascii=True, default=str).encode("ascii")
    return Response(content, status_code=status, headers=dict(headers or {}), media_type="application/json")


def rpc_error_response(
    status: int,
    code: int,
    message: str,
    *,
    request_id: str | int | None = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An HTTP refusal whose body is the JSON-RPC error a client library can surface as-is."""
    return json_response(jsonrpc.error_response(request_id, code, message, data), status, headers)


def busy_response(message: str, request_id: str | int | None = None, status: int = 503) -> Response:
    """503 (or `status`) with a Retry-After: the server cannot take this message now (a session limit, or stopping)."""
    return rpc_error_response(
        status, jsonrpc.INTERNAL_ERROR, message, request_id=request_id, headers={"Retry-After": RETRY_AFTER_SEC}
    )


def event_frame(message: Any, event: str = "message", event_id: str | None = None) -> bytes:
    """One server-sent event carrying a JSON-RPC message (a single `data:` line), with its id if given."""
    head = b"id: " + event_id.encode("ascii") + b"\r\n" if event_id is not None else b""
    return head + b"event: " + event.encode("ascii") + b"\r\ndata: " + jsonrpc.encode(message) + b"\r\n\r\n"


def priming_frame(event_id: str, retry_ms: int = RECONNECT_MS) -> bytes:
    """The empty event that opens a resumable stream: the id to resume from, and how long to wait first."""
    return b"id: " + event_id.encode("ascii") + b"\r\nretry: " + str(retry_ms).encode("ascii") + b"\r\ndata: \r\n\r\n"


def retry_frame(retry_ms: int = RECONNECT_MS) -> bytes:
    """A `retry` field alone, sent before the server closes a stream the client should resume."""
    return b"retry: " + str(retry_ms).encode("ascii") + b"\r\n\r\n"


def event_stream_response(message: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A whole event stream of one event: the answer for a client that reads only event streams."""
    return Response(event_frame(message), headers={**_SSE_HEADERS, **(headers or {})})


async def start_event_stream(send: Send, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
    merged = {**_SSE_HEADERS, **{name.lower(): value for name, value in (headers or {}).items()}}
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in merged.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def send_chunk(send: Send, chunk: bytes, *, more: bool = True) -> None:
    """Write part of a streamed body; a client that stops reading for `SEND_TIMEOUT_SEC` raises TimeoutError."""
    async with asyncio.timeout(SEND_TIMEOUT_SEC):
        await send({"type": "http.response.body", "body": chunk, "more_body": more})


def client_address(scope: Any) -> str | None:
    """The client's address without its port, as the ASGI server saw the connection; None if unknown."""
    client = scope.get("client") if isinstance(scope, dict) else None
    return str(client[0]) if client else None


def peer_of(scope: Any) -> str:
    """The client's address as the audit log names it, e.g. "http 127.0.0.1:50412"."""
    client = scope.get("client") if isinstance(scope, dict) else None
    if client:
        host, port = client[0], client[1]
        return f"http {host}:{port}" if port is not None else f"http {host}"
    return "http"
