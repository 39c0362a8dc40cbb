"""The MCP dispatcher: one decoded JSON-RPC message in, its reply out.

Every transport (stdio, legacy HTTP+SSE, Streamable HTTP) feeds the same
dispatcher, so the protocol is implemented once. The dispatcher does no I/O
and starts no threads; what differs between transports is passed in:

* a `Session` holds what one connection has agreed on (era, negotiated
  version, log level, whether `initialize` was answered) and the tool calls
  it has in flight. stdio and legacy SSE keep one per connection; a
  stateless Streamable HTTP request builds a fresh one (`Session.modern()`
  or `Session.handshake(version)`).
* a `NotificationSink` per message receives the notifications that belong to
  that message (progress, log messages), so an HTTP transport can route them
  onto that request's own response stream.

`handle()` returns the reply for a request, a list of replies for a batch,
or `None` when nothing must be sent (notifications, responses, a request the
client cancelled). For a single
message, everything except running a tool completes before the first
`await`, so a transport may start one task per incoming message and state
changes (initialize, logging/setLevel, cancellation) still take effect in
arrival order; the elements of a batch run concurrently, as JSON-RPC allows.

Error policy, from the outside in: undecodable text is -32700 with a null
id; a message that is not a request is -32600; so is a request reusing the
id of one still in flight, answered with a null id so that the running
request's reply stays the only one carrying it; a method this server does not
serve is -32601 before anything else is looked at; params that do not fit
the method's schema at the requested version, or an unknown tool, are
-32602; a refused or failed tool run is a normal result with `isError:
true`, so the model can read why and correct itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final

import mcp_types as types
from pydantic import ValidationError

from actors.api import ToolBackend, ToolInfo, UnknownTool
from actors.results import CallOutcome, ErrorType, InvalidCall
from transports.logs import correlation
from transports.mcp import eras, jsonrpc
from transports.mcp.eras import Era
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RpcError
from transports.mcp.tool_results import call_tool_result

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "MAX_BATCH",
    "SERVED_METHODS",
    "McpDispatcher",
    "NotificationSink",
    "Reply",
    "Session",
]

logger = logging.getLogger(__name__)

NotificationSink = Callable[[dict[str, Any]], None]
"""Receives a ready-to-send JSON-RPC notification; must not block (transports enqueue)."""

Reply = dict[str, Any] | list[dict[str, Any]] | None

SERVED_METHODS: Final[frozenset[str]] = frozenset(
    {"initialize", "ping", "logging/setLevel", "server/discover", "tools/list", "tools/call"}
)

MAX_BATCH: Final[int] = 256
"""Upper bound on one batch, so a single line cannot fan out into unbounded concurrent work."""

DEFAULT_INSTRUCTIONS: Final[str] = (
    "labrecon runs nmap, masscan and gobuster against lab networks only. "
    "Targets must be single IPv4 addresses, CIDR blocks or host names inside the configured lab "
    "allowlist; anything else is refused before a packet is sent. "
    "A refused or failed run comes back as a result with isError true: read "
    "structuredContent.error.error_type and follow recovery_suggestion before retrying. "
    "Scans can take minutes: send a progressToken to receive progress, and cancel calls you no longer need."
)

_LOGGER_NAME: Final[str] = "labrecon"
_MAX_ECHO: Final[int] = 120


def _package_version() -> str:
    try:
        return metadata.version("labrecon")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _short(text: str) -> str:
    """Client-supplied text echoed in an error or log, clipped so a huge value is not reflected."""
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."


@dataclass(eq=False)
class _Call:
    """A tools/call between arrival and reply."""

    call_id: str
    tool: str
    task: asyncio.Task[Any] | None
    progress_token: types.ProgressToken | None
    last_progress: float | None = None
    finished: bool = False
    cancelled_by_client: bool = False
    task_cancelled: bool = False


@dataclass(eq=False)
class Session:
    """What one client connection has agreed on, and the calls it has in flight.

    `era` is decided by the first era-distinctive request (`initialize` for
    the handshake era, an enveloped request such as `server/discover` for
    2026-07-28) and never changes afterwards. `allowed_eras` lets a
    transport serve only one era (legacy SSE: handshake; stateless HTTP:
    modern).
    """

    allowed_eras: frozenset[Era] = frozenset(Era)
    era: Era | None = None
    protocol_version: str | None = None
    initialize_answered: bool = False
    initialized: bool = False
    client_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] | None = None
    log_level: str | None = None
    calls: dict[str, _Call] = field(default_factory=dict, repr=False)
    peer: str = ""  # set by the transport: "stdio", or the HTTP client's address


    @classmethod
    def handshake(cls, protocol_version: str) -> Session:
        """A session already past the handshake, for transports where each request stands alone."""
        if protocol_version not in eras.HANDSHAKE_VERSIONS:
            raise ValueError(f"{protocol_version!r} is not a handshake-era protocol version")
        return cls(
            allowed_eras=frozenset({Era.HANDSHAKE}),
            era=Era.HANDSHAKE,
            protocol_version=protocol_version,
            initialize_answered=True,
            initialized=True,
        )

    @classmethod
    def modern(cls) -> Session:
        """A session that accepts only 2026-07-28 enveloped requests."""
        return cls(allowed_eras=frozenset({Era.MODERN}))

    @property
    def in_flight(self) -> int:
        # list() snapshots the dict in one step, so a status reader on another thread is safe.
        return sum(1 for call in list(self.calls.values()) if not call.finished)


@dataclass(frozen=True)
class _Context:
    """One admitted request: the version it is served at and where its notifications go."""

    request: jsonrpc.Request
    version: str
    era: Era
    log_level: str | None
    notify: NotificationSink
    client_info: dict[str, Any] | None = None  # 2026-07-28: each request names its client

    @property
    def params(self) -> dict[str, Any]:
        return self.request.params or {}

    def caller_in(self, session: Session) -> str:
        """Who is asking, as the audit log records it: the transport's peer and the client's name."""
        info = self.client_info or session.client_info or {}
        client = f"{info.get('name', '?')}/{info.get('version', '?')}" if info else "unknown client"
        return f"{session.peer or 'unknown peer'} {client}"


class McpDispatcher:
    """Serves MCP over any transport, backed by a `ToolBackend`."""

    def __init__(
        self,
        backend: ToolBackend,
        *,
        server_info: types.Implementation | None = None,
        instructions: str | None = DEFAULT_INSTRUCTIONS,
        list_ttl_ms: int = 60_000,
        cache_scope: str = "public",
        new_call_id: Callable[[], str] | None = None,
    ) -> None:
        if list_ttl_ms < 0:
            raise ValueError("list_ttl_ms must be >= 0")
        if cache_scope not in ("public", "private"):
            raise ValueError("cache_scope must be 'public' or 'private'")
        self._backend = backend
        self._server_info = server_info or types.Implementation(
            name="labrecon", title="labrecon: lab network reconnaissance", version=_package_version()
        )
        self._server_info_stamp = self._server_info.model_dump(by_alias=True, mode="json", exclude_none=True)
        self._instructions = instructions
        self._list_ttl_ms = list_ttl_ms
        self._cache_scope = cache_scope
        self._new_call_id = new_call_id or (lambda: uuid.uuid4().hex)
        self._handlers: dict[str, Callable[[Session, _Context], dict[str, Any]]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "server/discover": self._discover,
            "tools/list": self._list_tools,
        }

    @property
    def server_info(self) -> types.Implementation:
        return self._server_info

    # ------------------------------------------------------------------ entry points

    async def handle_text(self, session: Session, text: str | bytes, notify: NotificationSink) -> Reply:
        """Decode one framed message and handle it; undecodable text gets -32700 with a null id."""
        try:
            message = jsonrpc.decode(text)
        except RpcError as exc:
            logger.info("unparseable message: %s", exc.message, extra={"size": len(text)})
            return exc.response()
        return await self.handle(session, message, notify)

    async def handle(self, session: Session, message: Any, notify: NotificationSink) -> Reply:
        """Handle one decoded JSON value: a message object or a batch array."""
        if isinstance(message, list):
            return await self._handle_batch(session, message, notify)
        return await self._handle_one(session, message, notify, in_batch=False)

    def cancel_all(self, session: Session) -> int:
        """Cancel every call in flight on `session`, e.g. when its transport shuts down.

        Unlike a client's cancellation, these calls are still answered (with
        their `cancelled` outcome) to whoever is still listening.
        """
        count = 0
        for call in list(session.calls.values()):
            if call.finished:
                continue
            count += 1
            with correlation(call.call_id):
                if not self._cancel_in_backend(call):
                    self._cancel_task(call)
                logger.info("cancelling tool call: transport shutting down", extra={"tool": call.tool})
        return count

    # ------------------------------------------------------------------ framing level

    async def _handle_batch(self, session: Session, batch: list[Any], notify: NotificationSink) -> Reply:
        if not batch:
            return jsonrpc.error_response(None, INVALID_REQUEST, "Invalid Request: empty batch")
        if session.era is not Era.HANDSHAKE or session.protocol_version not in eras.BATCH_VERSIONS:
            return jsonrpc.error_response(
                None,
                INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are accepted only on sessions that negotiated protocol "
                f"version {', '.join(sorted(eras.BATCH_VERSIONS))}",
                {"negotiated": session.protocol_version},
            )
        if len(batch) > MAX_BATCH:
            return jsonrpc.error_response(
                None, INVALID_REQUEST, f"Invalid Request: batch of {len(batch)} exceeds {MAX_BATCH} messages"
            )
        replies = await asyncio.gather(*(self._handle_one(session, item, notify, in_batch=True) for item in batch))
        answered = [reply for reply in replies if reply is not None]
        return answered or None

    async def _handle_one(
        self, session: Session, message: Any, notify: NotificationSink, *, in_batch: bool
    ) -> dict[str, Any] | None:
        try:
            msg = jsonrpc.classify(message)
        except RpcError as exc:
            logger.info("invalid message: %s", exc.message)
            return exc.response()
        if isinstance(msg, jsonrpc.Response):
            logger.debug("ignoring a response: this server sends no requests", extra={"request_id": msg.id})
            return None
        if isinstance(msg, jsonrpc.Notification):
            self._on_notification(session, msg)
            return None
        try:
            return await self._on_request(session, msg, notify, in_batch=in_batch)
        except RpcError as exc:
            logger.info(
                "request refused: %s", exc.message, extra={"method": _short(msg.method), "code": exc.code}
            )
            return exc.response(msg.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("request failed inside the server", extra={"method": msg.method})
            return jsonrpc.error_response(msg.id, INTERNAL_ERROR, "Internal error")

    # ------------------------------------------------------------------ requests

    async def _on_request(
        self, session: Session, msg: jsonrpc.Request, notify: NotificationSink, *, in_batch: bool
    ) -> dict[str, Any] | None:
        if jsonrpc.request_key(msg.id) in session.calls:
            # Answering with this id would be a second reply to the request already running under it.
            logger.info("request refused: its id is already in flight", extra={"method": _short(msg.method)})
            return jsonrpc.error_response(
                None, INVALID_REQUEST, "Invalid Request: a request with this id is already in flight", {"id": msg.id}
            )
        if msg.method not in SERVED_METHODS:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {_short(msg.method)!r}", _short(msg.method))
        if in_batch and msg.method == "initialize":
            raise RpcError(INVALID_REQUEST, "Invalid Request: initialize must not be part of a JSON-RPC batch")
        ctx = self._admit(session, msg, notify)
        if msg.method == "tools/call":
            result = await self._call_tool(session, ctx)
            if result is None:
                return None
        else:
            result = self._shape(msg.method, ctx.version, self._handlers[msg.method](session, ctx))
        return jsonrpc.result_response(msg.id, result)

    def _admit(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> _Context:
        """Apply the era rules and the version's schema; lock the session's era on first use."""
        if msg.method == "initialize":
            return self._admit_initialize(session, msg, notify)
        if eras.is_enveloped(msg.params):
            return self._admit_enveloped(session, msg, notify)
        return self._admit_plain(session, msg, notify)

    def _admit_initialize(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> _Context:
        requested = (msg.params or {}).get("protocolVersion")
        if session.era is Era.MODERN or Era.HANDSHAKE not in session.allowed_eras:
            # The handshake does not exist at the versions this session speaks;
            # -32022 names them so an auto-negotiating client re-probes instead of failing.
            raise eras.unsupported_version(requested)
        if session.initialize_answered:
            raise RpcError(INVALID_REQUEST, "Invalid Request: the session is already initialized")
        version = eras.negotiate_handshake(requested)
        eras.validate_request("initialize", version, msg.params)
        return _Context(msg, version, Era.HANDSHAKE, None, notify)

    def _admit_enveloped(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> _Context:
        if session.era is Era.HANDSHAKE or Era.MODERN not in session.allowed_eras:
            raise RpcError(
                INVALID_REQUEST,
                "Invalid Request: this connection uses the initialize handshake; requests carrying the "
                "2026-07-28 _meta envelope are not accepted on it",
            )
        envelope = eras.read_envelope(msg.params)
        eras.validate_request(msg.method, envelope.protocol_version, msg.params)
        # Only a request that passed the envelope checks decides the era, so a
        # rejected probe leaves the handshake available to the same client.
        session.era = Era.MODERN
        session.protocol_version = envelope.protocol_version
        return _Context(msg, envelope.protocol_version, Era.MODERN, envelope.log_level, notify, envelope.client_info)

    def _admit_plain(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> _Context:
        needs_envelope = (
            session.era is Era.MODERN
            or Era.HANDSHAKE not in session.allowed_eras
            or (msg.method == "server/discover" and session.era is None)
        )
        if needs_envelope:
            raise RpcError(
                INVALID_PARAMS,
                f"Invalid params: {msg.method} needs the 2026-07-28 envelope: params._meta with "
                f"{types.PROTOCOL_VERSION_META_KEY!r} and {types.CLIENT_CAPABILITIES_META_KEY!r}",
            )
        if not session.initialize_answered and msg.method != "ping":
            raise RpcError(
                INVALID_REQUEST,
                f"Invalid Request: {msg.method} before initialize; send initialize first "
                "(or use the 2026-07-28 per-request _meta envelope)",
            )
        version = session.protocol_version or eras.LATEST_HANDSHAKE_VERSION
        eras.validate_request(msg.method, version, msg.params)
        return _Context(msg, version, Era.HANDSHAKE, None, notify)

    def _shape(self, method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
        try:
            return eras.shape_result(method, version, result, self._server_info_stamp)
        except ValidationError:
            logger.exception("the server built a result that does not fit the schema", extra={"method": method})
            raise RpcError(INTERNAL_ERROR, "Internal error: the server built an invalid result") from None

    # ------------------------------------------------------------------ method handlers

    def _capabilities(self) -> types.ServerCapabilities:
        return types.ServerCapabilities(
            tools=types.ToolsCapability(list_changed=False), logging=types.LoggingCapability()
        )

    def _initialize(self, session: Session, ctx: _Context) -> dict[str, Any]:
        params = ctx.params
        session.era = Era.HANDSHAKE
        session.protocol_version = ctx.version
        session.initialize_answered = True
        session.client_info = params.get("clientInfo")
        session.client_capabilities = params.get("capabilities")
        client = (session.client_info or {}).get("name")
        logger.info(
            "session initialized",
            extra={
                "protocol_version": ctx.version,
                "requested_version": _short(str(params.get("protocolVersion"))),
                "client": _short(str(client)),
            },
        )
        return types.InitializeResult(
            protocol_version=ctx.version,
            capabilities=self._capabilities(),
            server_info=self._server_info,
            instructions=self._instructions,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _ping(self, session: Session, ctx: _Context) -> dict[str, Any]:
        return {}

    def _set_level(self, session: Session, ctx: _Context) -> dict[str, Any]:
        session.log_level = ctx.params["level"]
        return {}

    def _discover(self, session: Session, ctx: _Context) -> dict[str, Any]:
        return types.DiscoverResult(
            supported_versions=list(eras.MODERN_VERSIONS),
            capabilities=self._capabilities(),
            instructions=self._instructions,
            ttl_ms=self._list_ttl_ms,
            cache_scope=self._cache_scope,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _list_tools(self, session: Session, ctx: _Context) -> dict[str, Any]:
        if ctx.params.get("cursor") is not None:
            raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor; tools/list returns a single page")
        return types.ListToolsResult(
            tools=[_tool(info) for info in self._backend.list_tools()],
            ttl_ms=self._list_ttl_ms,
            cache_scope=self._cache_scope,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    async def _call_tool(self, session: Session, ctx: _Context) -> dict[str, Any] | None:
        name: str = ctx.params["name"]
        arguments: dict[str, Any] = ctx.params.get("arguments") or {}
        known = [info.name for info in self._backend.list_tools()]
        if name not in known:
            raise RpcError(
                INVALID_PARAMS,
                f"Invalid params: unknown tool {_short(name)!r}; available: {', '.join(known) or 'none'}",
                {"available": known},
            )
        key = jsonrpc.request_key(ctx.request.id)
        call = _Call(
            call_id=self._new_call_id(),
            tool=name,
            task=asyncio.current_task(),
            progress_token=_progress_token(ctx.params),
        )
        session.calls[key] = call
        client_log = self._client_log(session, ctx)
        with correlation(call.call_id):
            logger.debug("tool call started", extra={"tool": name, "request_id": ctx.request.id})
            client_log("debug", {"event": "call_started", "tool": name, "call_id": call.call_id})
            try:
                outcome = await self._run(call, arguments, ctx, ctx.caller_in(session))
            finally:
                _close_books(session, key, call)
            result = self._finish(call, ctx, client_log, outcome)
            if result is not None:
                # Like an access log, the line is written once the reply is on its way: it must not delay it.
                # (call_soon runs it in a copy of this context, so it keeps the call's correlation id.)
                asyncio.get_running_loop().call_soon(_log_finished, call, outcome)
        return result

    def _finish(
        self, call: _Call, ctx: _Context, client_log: Callable[[str, dict[str, Any]], None], outcome: CallOutcome
    ) -> dict[str, Any] | None:
        """The result to send for a settled call, or None when the client cancelled it."""
        if call.cancelled_by_client:
            # The client said the result will not be used; the spec asks for no reply.
            logger.info("tool call cancelled by the client; no reply sent", extra={"tool": call.tool})
            return None
        client_log(
            "info" if outcome.ok else "warning",
            {"event": "call_finished", "tool": call.tool, "call_id": call.call_id, "ok": outcome.ok,
             "error_type": outcome.error_type.value if outcome.error_type else None},
        )
        # Built to the negotiated version's shape directly: the hot path skips the schema sieve.
        result = call_tool_result(outcome, structured_content=eras.has_feature(ctx.version, "structured_content"))
        return eras.stamp_modern(result, self._server_info_stamp) if ctx.version in eras.MODERN_VERSIONS else result

    async def _run(
        self,
        call: _Call,
        arguments: dict[str, Any],
        ctx: _Context,
        caller: str,
    ) -> CallOutcome:
        progress = self._progress_sink(call, ctx.notify) if call.progress_token is not None else None
        try:
            return await self._backend.acall(
                call.tool, arguments, call_id=call.call_id, progress=progress, caller=caller
            )
        except UnknownTool as exc:
            raise RpcError(
                INVALID_PARAMS, f"Invalid params: {_short(str(exc))}", {"available": list(exc.known)}
            ) from None
        except InvalidCall as exc:
            return CallOutcome.failure(call.tool, call.call_id, ErrorType.VALIDATION, str(exc))
        except asyncio.CancelledError:
            if not call.task_cancelled:
                raise
            # Our own fallback cancel (the backend did not know the call yet):
            # absorb it so the request still settles through the normal path.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return CallOutcome.failure(call.tool, call.call_id, ErrorType.CANCELLED, "the call was cancelled")
        except Exception:
            logger.exception("tool backend raised", extra={"tool": call.tool})
            return CallOutcome.failure(
                call.tool, call.call_id, ErrorType.INTERNAL, "the server failed while running the call"
            )

    # ------------------------------------------------------------------ notifications

    def _on_notification(self, session: Session, msg: jsonrpc.Notification) -> None:
        if msg.method == "notifications/cancelled":
            self._on_cancelled(session, msg.params or {})
        elif msg.method == "notifications/initialized":
            if session.initialize_answered:
                session.initialized = True
            else:
                logger.info("notifications/initialized before initialize; ignored")
        else:
            logger.debug("notification ignored", extra={"method": _short(msg.method)})

    def _on_cancelled(self, session: Session, params: dict[str, Any]) -> None:
        request_id = params.get("requestId")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            logger.info("notifications/cancelled without a usable requestId; ignored")
            return
        call = session.calls.get(jsonrpc.request_key(request_id))
        if call is None or call.finished or call.cancelled_by_client:
            logger.debug("cancellation for a request that is not in flight", extra={"request_id": request_id})
            return
        call.cancelled_by_client = True
        reason = params.get("reason")
        with correlation(call.call_id):
            accepted = self._cancel_in_backend(call)
            if not accepted:
                self._cancel_task(call)
            logger.info(
                "tool call cancelled by the client",
                extra={
                    "tool": call.tool,
                    "request_id": request_id,
                    "reason": _short(reason) if isinstance(reason, str) else None,
                    "backend_accepted": accepted,
                },
            )

    def _cancel_in_backend(self, call: _Call) -> bool:
        try:
            return bool(self._backend.cancel(call.call_id))
        except Exception:
            logger.exception("backend failed to cancel a call", extra={"tool": call.tool})
            return False

    def _cancel_task(self, call: _Call) -> None:
        if call.task is not None and not call.task.done() and not call.task_cancelled:
            call.task_cancelled = True
            call.task.cancel()

    # ------------------------------------------------------------------ outgoing notifications

    def _progress_sink(self, call: _Call, notify: NotificationSink) -> Callable[..., None]:
        token = call.progress_token
        assert token is not None

        def progress(done: float, total: float | None = None, message: str | None = None) -> None:
            if call.finished or call.cancelled_by_client:
                return
            try:
                value = float(done)
            except (TypeError, ValueError):
                return
            # Progress must increase; a stale or repeated value is dropped, never sent.
            if not math.isfinite(value) or (call.last_progress is not None and value <= call.last_progress):
                return
            call.last_progress = value
            finite_total = (
                float(total)
                if isinstance(total, int | float) and not isinstance(total, bool) and math.isfinite(total)
                else None
            )
            params = types.ProgressNotificationParams(
                progress_token=token,
                progress=value,
                total=finite_total,
                message=message if isinstance(message, str) else None,
            )
            self._emit(
                notify,
                jsonrpc.notification(
                    "notifications/progress", params.model_dump(by_alias=True, mode="json", exclude_none=True)
                ),
            )

        return progress

    def _client_log(self, session: Session, ctx: _Context) -> Callable[[str, dict[str, Any]], None]:
        """Log messages for the client, sent only at or above the level it asked for.

        Handshake era: the session's `logging/setLevel` (read when sending, so
        a change applies to calls already running). 2026-07-28: the level in
        this request's envelope; without one, nothing is sent.
        """

        def emit(level: str, data: dict[str, Any]) -> None:
            threshold = ctx.log_level if ctx.era is Era.MODERN else session.log_level
            if not eras.log_level_enabled(threshold, level):
                return
            params = types.LoggingMessageNotificationParams(level=level, logger=_LOGGER_NAME, data=data)
            self._emit(
                ctx.notify,
                jsonrpc.notification(
                    "notifications/message", params.model_dump(by_alias=True, mode="json", exclude_none=True)
                ),
            )

        return emit

    def _emit(self, notify: NotificationSink, message: dict[str, Any]) -> None:
        try:
            notify(message)
        except Exception:
            logger.exception("notification sink failed", extra={"method": message.get("method")})


def _tool(info: ToolInfo) -> types.Tool:
    return types.Tool(
        name=info.name,
        title=info.title or None,
        description=info.description,
        input_schema=info.input_schema,
        output_schema=info.output_schema or None,
        annotations=types.ToolAnnotations.model_validate(info.annotations) if info.annotations else None,
    )


def _close_books(session: Session, key: str, call: _Call) -> None:
    """The call is over: cancellations no longer apply and its request id is free again."""
    call.finished = True
    if session.calls.get(key) is call:
        del session.calls[key]


def _log_finished(call: _Call, outcome: CallOutcome) -> None:
    error_type = outcome.error_type.value if outcome.error_type else None
    logger.info(
        "tool call finished",
        extra={"tool": call.tool, "ok": outcome.ok, "error_type": error_type, "duration_sec": outcome.duration_sec},
    )


def _progress_token(params: dict[str, Any]) -> types.ProgressToken | None:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if isinstance(token, str | int) and not isinstance(token, bool):
        return token
    return None
