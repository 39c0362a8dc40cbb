"""MCP over the legacy HTTP+SSE transport (protocol 2024-11-05), for clients that still speak it.

The `GET /sse` event stream *is* the session: its first event names where to post messages, every
reply and notification travels back on it, and each POST is only acknowledged (202). When the
stream closes the session closes with it and its calls are cancelled: nothing else could carry
their answers. Legacy sessions speak only the handshake era, and a session belongs to the identity
(bearer token) that opened its stream: a POST with another is answered as for an unknown session.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from transports.http.exchange import (
    RETRY_AFTER_SEC,
    SEND_TIMEOUT_SEC,
    AsgiEndpoint,
    BodyTooLarge,
    ClientGone,
    busy_response,
    client_address,
    peer_of,
    read_body,
    rpc_error_response,
)
from transports.http.rules import accepts, is_session_id
from transports.http.security import bind_session, holds_session, identity_of
from transports.http.session_policy import counts_as_use
from transports.http.sessions import HttpSession, SessionKind, SessionRefused, SessionTable
from transports.mcp import jsonrpc
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.eras import Era
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, RpcError
from transports.mcp.session import Session

__all__ = ["DEFAULT_MAX_PENDING", "LegacySseTransport"]

log = logging.getLogger("labrecon.sse")

DEFAULT_MAX_PENDING: Final = 1024


class LegacySseTransport:
    """`GET /sse` and `POST /messages/` as two ASGI endpoints sharing one session table."""

    def __init__(
        self,
        dispatcher: McpDispatcher,
        sessions: SessionTable,
        *,
        max_body_bytes: int,
        messages_path: str = "/messages/",
        ping_sec: float = 15.0,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.max_body_bytes = max_body_bytes
        self.messages_path = messages_path
        self.ping_sec = ping_sec
        self.max_pending = max_pending

    def routes(self, stream_path: str = "/sse") -> list[Route]:
        bare = self.messages_path.rstrip("/")
        return [
            Route(stream_path, AsgiEndpoint(self.stream), methods=["GET"]),
            Route(bare, AsgiEndpoint(self.post), methods=["POST"]),
            Route(bare + "/", AsgiEndpoint(self.post), methods=["POST"]),
        ]

    # --- GET /sse ---------------------------------------------------------------------

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":  # Starlette routes HEAD with GET; a HEAD must not open a session
            await rpc_error_response(405, INVALID_REQUEST, "Method Not Allowed", headers={"Allow": "GET"})(
                scope, receive, send
            )
            return
        headers = Headers(scope=scope)
        if not accepts(headers.get("accept")).event_stream:
            await rpc_error_response(406, INVALID_REQUEST, "Not Acceptable: this endpoint answers text/event-stream")(
                scope, receive, send
            )
            return
        mcp = Session(allowed_eras=frozenset({Era.HANDSHAKE}), peer=peer_of(scope))
        bind_session(mcp, identity_of(scope))
        try:
            session = self.sessions.open(SessionKind.SSE, mcp, client=client_address(scope))
        except SessionRefused as exc:
            await busy_response(str(exc), status=exc.status)(scope, receive, send)
            return
        mcp.standalone = session.queue_notification  # the session is its stream
        endpoint = f"{scope.get('root_path', '').rstrip('/')}{self.messages_path}?session_id={session.id}"
        response = EventSourceResponse(
            self._events(session, endpoint), ping=self.ping_sec, send_timeout=SEND_TIMEOUT_SEC
        )
        try:
            await response(scope, receive, send)
        except SendTimeoutError:
            log.info("session %s stopped reading its event stream; dropped", session.short_id)
        finally:
            self.sessions.close(session, "event stream closed")

    async def _events(self, session: HttpSession, endpoint: str) -> Any:
        yield {"event": "endpoint", "data": endpoint}
        while (message := await session.outbox.get()) is not None:
            yield {"event": "message", "data": jsonrpc.encode(message).decode("ascii")}

    # --- POST /messages/ --------------------------------------------------------------

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._post(scope, receive)
        await response(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive) -> Response:
        """202, or: 400 a missing or malformed session id, 404 an unknown or closed one (or one another
        identity opened), 413 a body over
        `max_body_bytes`, 400 with the parse error for a body that is not JSON (the official client
        treats any non-2xx as a failed send, and a null-id error on the stream would match no
        request), 429 when `max_pending` messages of the session are already being served."""
        session_id = QueryParams(scope.get("query_string", b"")).get("session_id")
        if session_id is None:
            return rpc_error_response(400, INVALID_REQUEST, "the session_id query parameter is required")
        if not is_session_id(session_id):
            return rpc_error_response(400, INVALID_REQUEST, "session_id is malformed: expected 32 hex digits")
        session = self.sessions.get(session_id, SessionKind.SSE)
        if session is None or not holds_session(session.mcp, identity_of(scope)):
            return rpc_error_response(404, INVALID_REQUEST, "no such session: it was closed or never existed")
        try:
            body = await read_body(receive, self.max_body_bytes, Headers(scope=scope).get("content-length"))
        except BodyTooLarge as exc:
            return rpc_error_response(413, INVALID_REQUEST, f"Invalid Request: {exc}", data={"limit": exc.limit})
        except ClientGone:
            return Response(status_code=400)  # nobody will read it
        try:
            message = jsonrpc.decode(body)
        except RpcError as exc:
            log.info("unparseable message on session %s: %s", session.short_id, exc.message)
            return rpc_error_response(400, exc.code, exc.message, data=exc.data)
        if session.closed:
            return rpc_error_response(404, INVALID_REQUEST, "no such session: it was closed or never existed")
        if len(session.tasks) + len(session.outbox) >= self.max_pending:
            return rpc_error_response(
                429,
                INTERNAL_ERROR,
                f"this session already has {self.max_pending} messages in progress; read the event stream "
                "and retry",
                headers={"Retry-After": RETRY_AFTER_SEC},
            )
        self.sessions.touch(session, used=counts_as_use(message))
        self.sessions.spawn(session, self._serve(session, message))
        return Response("Accepted", status_code=202, media_type="text/plain")

    async def _serve(self, session: HttpSession, message: Any) -> None:
        reply = await self.dispatcher.handle(session.mcp, message, session.queue_notification)
        if reply is not None:
            session.outbox.put(reply)

