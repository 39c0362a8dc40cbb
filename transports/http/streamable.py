"""MCP over Streamable HTTP: one endpoint (`/mcp`) serving both protocol eras.

Handshake-era clients live in sessions (`Mcp-Session-Id`, opened by `initialize`); a 2026-07-28
request stands alone. A session belongs to the identity (bearer token) that opened it: to any other
it is an unknown session. Every request gets one answer: JSON when the reply comes before any
notification, else an event stream of the notifications and then the reply. A client that leaves
cancels its request, unless it holds an event id to resume the stream with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

from mcp_types import HEADER_MISMATCH
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from transports.http.exchange import (
    KEEPALIVE_FRAME,
    SEND_TIMEOUT_SEC,
    BodyTooLarge,
    ClientGone,
    busy_response,
    client_address,
    event_stream_response,
    json_response,
    peer_of,
    priming_frame,
    read_body,
    retry_frame,
    rpc_error_response,
    send_chunk,
    start_event_stream,
    wait_disconnect,
)
from transports.http.response_streams import Reader, ResponseStream
from transports.http.rules import (
    LAST_EVENT_ID_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    Accepts,
    accepts,
    duplicated_routing_header,
    is_initialize,
    is_json_content,
    is_modern_request,
    is_session_id,
    is_tool_call,
    modern_header_problem,
    reply_status,
    request_id_of,
    resumable_at,
    version_problem,
)
from transports.http.security import bind_session, holds_session, identity_of
from transports.http.session_policy import counts_as_use
from transports.http.sessions import HttpSession, SessionKind, SessionRefused, SessionTable
from transports.mcp import jsonrpc
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.eras import MODERN_VERSIONS, Era
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, RpcError
from transports.mcp.session import Session

__all__ = ["StreamableHttpTransport"]

log = logging.getLogger("labrecon.http.mcp")

_ALLOW: Final = "GET, POST, DELETE"


class _Pause(Enum):
    """Why a connection reading a response stream stopped waiting."""

    NEWS = "an event arrived or the stream finished"
    QUIET = "nothing happened for keepalive_sec"
    CLOSING = "the server closes this connection now; the client resumes the stream"
    REPLACED = "another connection resumed the stream"
    GONE = "the client left"


class StreamableHttpTransport:
    """The `/mcp` endpoint as one ASGI app over a shared session table."""

    def __init__(
        self,
        dispatcher: McpDispatcher,
        sessions: SessionTable,
        *,
        max_body_bytes: int,
        keepalive_sec: float = 15.0,
        stream_close_sec: float = 0.0,
        resume_window_sec: float = 60.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.max_body_bytes = max_body_bytes
        self.keepalive_sec = keepalive_sec
        self.stream_close_sec = stream_close_sec
        self.resume_window_sec = resume_window_sec

    def route(self, path: str = "/mcp") -> Route:
        return Route(path, self)  # an instance, not a function: Starlette hands it the raw ASGI call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "POST":
            await self._post(scope, receive, send)
            return
        if method == "GET":
            response = await self._get(scope, receive, send)
        elif method == "DELETE":
            response = self._delete(scope)
        else:
            response = rpc_error_response(
                405, INVALID_REQUEST, f"Method Not Allowed: {method}", headers={"Allow": _ALLOW}
            )
        if response is not None:
            await response(scope, receive, send)

    # --- POST -------------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then serve it statelessly (2026-07-28) or in its session.

        A request is 2026-07-28 when its version header names such a version, or, with no version
        header and no session, when its body carries an envelope (so a client that forgot the header
        is told so rather than asked to initialize). Otherwise `initialize` without a session opens
        one and anything else needs `Mcp-Session-Id` (400 without it, 404 once the session is
        unknown, expired or deleted); a version header must name a version this server speaks (400).
        Refusals: 406 accepting neither JSON nor events, 415 a body that is not JSON, 413 over
        `max_body_bytes`, 400 unparseable JSON (the parse error is the body), 503 with `Retry-After`
        when the table is full of sessions in use or the server is stopping, 429 with `Retry-After`
        when this client address holds its share. They carry the request's id whenever it was read.
        """
        headers = Headers(scope=scope)
        accept = accepts(headers.get("accept"))
        if not accept.anything:
            await _refuse(406, "Not Acceptable: accept application/json and/or text/event-stream")(scope, receive, send)
            return
        if not is_json_content(headers.get("content-type")):
            await _refuse(415, "Unsupported Media Type: the body must be application/json")(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_body_bytes, headers.get("content-length"))
        except BodyTooLarge as exc:
            await _refuse(413, f"Invalid Request: {exc}", data={"limit": exc.limit})(scope, receive, send)
            return
        except ClientGone:
            return
        try:
            message = jsonrpc.decode(body)
        except RpcError as exc:
            await _rpc_refusal(400, exc)(scope, receive, send)
            return
        request_id = request_id_of(message)
        version = headers.get(VERSION_HEADER)
        if (problem := version_problem(version)) is not None:
            await _rpc_refusal(400, problem, request_id)(scope, receive, send)
            return
        if is_listen(message) and not accept.event_stream:  # a listen stream is events or nothing
            refusal = "Not Acceptable: subscriptions/listen answers with an event stream; accept text/event-stream"
            await _refuse(406, refusal, request_id=request_id)(scope, receive, send)
            return

        session_id = headers.get(SESSION_HEADER)
        if version in MODERN_VERSIONS or (version is None and session_id is None and is_modern_request(message)):
            await self._stateless(scope, receive, send, headers, message, accept)
            return
        if session_id is None:
            if is_initialize(message):
                response = await self._initialize(message, accept, scope)
            else:
                response = _refuse(
                    400,
                    "Bad Request: the Mcp-Session-Id header is required; send initialize first (or use the "
                    "2026-07-28 per-request envelope)",
                    request_id=request_id,
                )
            await response(scope, receive, send)
            return
        found = self._session(scope, session_id, request_id)
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        self.sessions.touch(found, used=counts_as_use(message))
        await self._exchange(
            scope, receive, send, found.mcp, message, accept, owner=found, headers={SESSION_HEADER: found.id}
        )

    async def _initialize(self, message: Any, accept: Accepts, scope: Scope) -> Response:
        mcp = Session(allowed_eras=frozenset({Era.HANDSHAKE}), peer=peer_of(scope))
        bind_session(mcp, identity_of(scope))
        try:
            session = self.sessions.open(SessionKind.HTTP, mcp, client=client_address(scope))
        except SessionRefused as exc:
            return busy_response(str(exc), request_id_of(message), exc.status)
        reply = await self.dispatcher.handle(session.mcp, message, _nowhere)
        if isinstance(reply, dict) and "result" in reply:
            return _reply_response(reply, accept, {SESSION_HEADER: session.id})
        self.sessions.close(session, "initialize was refused")
        return _reply_response(reply, accept)

    async def _stateless(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, message: Any, accept: Accepts
    ) -> None:
        """A 2026-07-28 request: no session; `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` must
        repeat what the body says (400 HEADER_MISMATCH otherwise), and closing the response cancels it."""
        duplicated = duplicated_routing_header(scope.get("headers", ()))
        problem = (
            RpcError(HEADER_MISMATCH, f"the {duplicated} header appears more than once")
            if duplicated is not None
            else modern_header_problem(message, headers)
        )
        if problem is not None:
            await _rpc_refusal(400, problem, request_id_of(message))(scope, receive, send)
            return
        if not self.sessions.accepting:
            await busy_response("the server is shutting down", request_id_of(message))(scope, receive, send)
            return
        mcp = Session.modern()
        mcp.peer = peer_of(scope)
        bind_session(mcp, identity_of(scope))
        with self.sessions.stateless(mcp):
            await self._exchange(scope, receive, send, mcp, message, accept, owner=None, headers={}, modern=True)

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        mcp: Session,
        message: Any,
        accept: Accepts,
        *,
        owner: HttpSession | None,
        headers: Mapping[str, str],
        modern: bool = False,
    ) -> None:
        """Run one message and answer it; a client that leaves cancels it unless it can resume.

        At 2025-11-25 and later a session's tool call is answered as a resumable event stream (see
        `response_streams`): losing the connection does not cancel the call, the client resumes with
        `GET` + `Last-Event-ID`, and a stream nobody resumes within `resume_window_sec` has its request
        cancelled. Anywhere else the client was given no way back to the answer, so leaving cancels the
        request (its tool call too, process group included).
        """
        resumable = accept.event_stream and resumable_at(mcp.protocol_version)
        stream = owner.resumable.open() if owner is not None and resumable else ResponseStream()

        def notify(note: dict[str, Any]) -> None:
            if accept.event_stream:
                stream.append(note)

        task = self.sessions.spawn(owner, self.dispatcher.handle(mcp, message, notify))
        stream.request = task
        task.add_done_callback(lambda done: stream.finish(_outcome(done, message)))
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await self._answer(scope, receive, send, stream, gone, message, accept, headers, owner, modern)
        except TimeoutError:
            log.info("client stopped reading its event stream; dropped", extra={"session": _short(owner)})
        finally:
            gone.cancel()
            if not stream.primed:
                if owner is not None:
                    owner.resumable.forget(stream)
                if not task.done():
                    # The client left (or stopped reading) holding no event id: it cannot come back for the answer.
                    task.cancel()
                    log.info("client gone; request cancelled", extra={"session": _short(owner)})

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        stream: ResponseStream,
        gone: asyncio.Future[None],
        message: Any,
        accept: Accepts,
        headers: Mapping[str, str],
        owner: HttpSession | None,
        modern: bool,
    ) -> None:
        """JSON if the reply comes first; otherwise an event stream of the notifications, then the reply.

        The first notification (progress, a log message) switches the response to an event stream,
        and so does `keepalive_sec` of silence, so keepalive comments hold the connection through
        proxies. A client accepting only JSON gets the reply alone, one accepting only events gets
        even a quick reply as an event; a message with no reply gets 202. At 2026-07-28 a JSON-RPC
        error sent as JSON carries the status its code maps to; handshake-era errors are 200.
        """
        if not (stream.resumable and is_tool_call(message)):
            if not await self._first_news(stream, gone, listening=accept.event_stream):
                return
            if stream.holds_only_its_reply:
                reply = stream.reply
                if reply is None:
                    response = Response(status_code=202, headers=dict(headers))
                else:
                    response = _reply_response(reply, accept, headers, reply_status(reply, modern=modern))
                await response(scope, receive, send)
                return
        await start_event_stream(send, headers=headers)
        if stream.resumable:
            await send_chunk(send, priming_frame(stream.priming_id))
            stream.primed = True
        await self._relay(send, stream, 0, gone, owner)

    async def _first_news(self, stream: ResponseStream, gone: asyncio.Future[None], *, listening: bool) -> bool:
        """Wait for the reply, a notification or (for a client `listening` to events) `keepalive_sec`.

        False once the client has gone.
        """
        news = asyncio.ensure_future(stream.wait_beyond(0))
        try:
            done, _ = await asyncio.wait(
                {news, gone}, timeout=self.keepalive_sec if listening else None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            news.cancel()
        return gone not in done

    async def _relay(
        self, send: Send, stream: ResponseStream, cursor: int, gone: asyncio.Future[None], owner: HttpSession | None
    ) -> None:
        """Send the stream's events after `cursor` as they come, to its end or until this connection ends.

        A connection ends when its client leaves, when another connection
        resumes the stream, or, for a resumable stream, `stream_close_sec`
        after it began (with a `retry` field: the client resumes it).
        """
        reader = stream.attach()
        loop = asyncio.get_running_loop()
        closes_at = loop.time() + self.stream_close_sec if stream.primed and self.stream_close_sec > 0 else None
        try:
            while True:
                for number, frame in stream.after(cursor):
                    await send_chunk(send, frame)
                    cursor = number
                if stream.ended_for(cursor):
                    await send_chunk(send, b"", more=False)
                    if owner is not None:
                        owner.resumable.forget(stream)  # delivered: nothing left to resume
                    return
                pause = await self._pause(stream, cursor, gone, reader, closes_at)
                if pause is _Pause.GONE:
                    if stream.primed:
                        log.info(
                            "client left a resumable stream; it has %gs to resume it",
                            self.resume_window_sec,
                            extra={"session": _short(owner), "stream": stream.number},
                        )
                    return
                if pause is _Pause.QUIET:
                    await send_chunk(send, KEEPALIVE_FRAME)
                elif pause is _Pause.CLOSING:
                    await send_chunk(send, retry_frame(), more=False)
                    return
                elif pause is _Pause.REPLACED:
                    await send_chunk(send, b"", more=False)
                    return
        finally:
            stream.detach(reader, self.resume_window_sec)

    async def _pause(
        self,
        stream: ResponseStream,
        cursor: int,
        gone: asyncio.Future[None],
        reader: Reader,
        closes_at: float | None,
    ) -> _Pause:
        """Wait until there is something to send, a reason to stop, or a keepalive is due."""
        timeout, closing = self.keepalive_sec, False
        if closes_at is not None and (left := closes_at - asyncio.get_running_loop().time()) <= timeout:
            timeout, closing = max(0.0, left), True
        news = asyncio.ensure_future(stream.wait_beyond(cursor))
        replaced = asyncio.ensure_future(reader.replaced.wait())
        waiters: set[asyncio.Future[Any]] = {news, replaced, gone}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            news.cancel()
            replaced.cancel()
        if gone in done:
            return _Pause.GONE
        if replaced in done:
            return _Pause.REPLACED
        if news in done:
            return _Pause.NEWS
        return _Pause.CLOSING if closing else _Pause.QUIET

    # --- GET and DELETE ---------------------------------------------------------------

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        """Resume a request's stream (`Last-Event-ID`), or open the session's standalone stream.

        One standalone stream per session (409 for a second); it carries what belongs to no request
        (a task's status and progress) while it is open. At 2026-07-28 there are no sessions, so `GET`
        and `DELETE` are 405.
        """
        headers = Headers(scope=scope)
        if not accepts(headers.get("accept")).event_stream:
            return _refuse(406, "Not Acceptable: the standalone stream is text/event-stream")
        found = self._session_from(scope, headers)
        if isinstance(found, Response):
            return found
        last_event_id = headers.get(LAST_EVENT_ID_HEADER, "").strip()
        if last_event_id:  # an empty one means "no event seen yet", as browsers' EventSource sends it
            return await self._resume(scope, receive, send, found, last_event_id)
        if found.streams:
            return _refuse(409, "Conflict: this session already has its standalone event stream open")
        found.streams += 1
        found.mcp.standalone = found.queue_notification
        try:
            response = EventSourceResponse(
                _until_closed(found),
                ping=self.keepalive_sec,
                send_timeout=SEND_TIMEOUT_SEC,
                headers={SESSION_HEADER: found.id},
            )
            await response(scope, receive, send)
        except SendTimeoutError:
            log.info("session %s stopped reading its standalone stream; dropped", found.short_id)
        finally:
            found.streams -= 1
            found.mcp.standalone = None
        return None

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, session: HttpSession, last_event_id: str
    ) -> Response | None:
        """Replay a request's stream from the event after `last_event_id`, then carry on with it."""
        found = session.resumable.find(last_event_id)
        if found is None or found[0].ended_for(found[1]):
            return _refuse(400, "Bad Request: Last-Event-ID names no event stream of this session left to resume")
        stream, cursor = found
        self.sessions.touch(session)
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await start_event_stream(send, headers={SESSION_HEADER: session.id})
            await self._relay(send, stream, cursor, gone, session)
        except TimeoutError:
            log.info("client stopped reading a resumed event stream; dropped", extra={"session": session.short_id})
        finally:
            gone.cancel()
        return None

    def _delete(self, scope: Scope) -> Response:
        found = self._session_from(scope, Headers(scope=scope))
        if isinstance(found, Response):
            return found
        self.sessions.close(found, "ended by the client (DELETE)")
        return Response(status_code=204)

    def _session_from(self, scope: Scope, headers: Headers) -> HttpSession | Response:
        version = headers.get(VERSION_HEADER)
        if (problem := version_problem(version)) is not None:
            return _rpc_refusal(400, problem)
        if version in MODERN_VERSIONS:
            return _refuse(
                405, "Method Not Allowed: 2026-07-28 is stateless; only POST is served", headers={"Allow": "POST"}
            )
        session_id = headers.get(SESSION_HEADER)
        if session_id is None:
            return _refuse(400, "Bad Request: the Mcp-Session-Id header is required")
        return self._session(scope, session_id)

    def _session(self, scope: Scope, session_id: str, request_id: str | int | None = None) -> HttpSession | Response:
        """The session `session_id` names, if the request's identity opened it; else 404, as for an unknown id."""
        session = self.sessions.get(session_id, SessionKind.HTTP) if is_session_id(session_id) else None
        if session is None or not holds_session(session.mcp, identity_of(scope)):
            return _refuse(
                404, "Not Found: no such session (it expired, was deleted, or never existed)", request_id=request_id
            )
        return session


async def _until_closed(session: HttpSession) -> Any:
    """The standalone stream's events, until the session ends (keepalives are sent meanwhile)."""
    while (message := await session.outbox.get()) is not None:
        yield {"event": "message", "data": jsonrpc.encode(message).decode("ascii")}


def _outcome(task: asyncio.Task[Any], message: Any) -> Any:
    if task.cancelled():
        return jsonrpc.error_response(
            request_id_of(message),
            INVALID_REQUEST,
            "the request was cancelled before it finished: its session closed, or no client was left to answer",
        )
    if (exc := task.exception()) is not None:
        log.error("request failed inside the server", exc_info=exc)
        return jsonrpc.error_response(request_id_of(message), INTERNAL_ERROR, "Internal error")
    return task.result()


def is_listen(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "subscriptions/listen"


def _reply_response(
    reply: Any, accept: Accepts, headers: Mapping[str, str] | None = None, status: int = 200
) -> Response:
    """A reply ready at once: JSON (with `status`), or one event for a client that reads only event streams."""
    return json_response(reply, status, headers) if accept.json else event_stream_response(reply, headers)


def _short(session: HttpSession | None) -> str | None:
    return session.short_id if session is not None else None


def _nowhere(note: dict[str, Any]) -> None:
    """`initialize` sends no notifications; were one sent, no stream exists yet to carry it."""


def _refuse(
    status: int,
    message: str,
    *,
    request_id: str | int | None = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return rpc_error_response(status, INVALID_REQUEST, message, request_id=request_id, data=data, headers=headers)


def _rpc_refusal(status: int, error: RpcError, request_id: str | int | None = None) -> Response:
    return rpc_error_response(status, error.code, error.message, request_id=request_id, data=error.data)
