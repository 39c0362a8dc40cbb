"""The MCP dispatcher: one decoded JSON-RPC message in, its answer out, the same for every transport.

It touches no socket and starts no thread: a transport hands it a `Session` and a `NotificationSink`
and sends what comes back; scans are read through the runtime's `Scans`. For a single message
everything except running a tool or reading a scan happens before the first `await`, so session
changes (initialize, logging/setLevel, cancellation) take effect in arrival order. When the tool list
changes, a transport calls `tools_changed` for each session it holds, on its loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from importlib import metadata
from typing import Any, Final, Literal

import mcp_types as types
from pydantic import ValidationError

from actors.api import ToolBackend, ToolInfo
from supervisor.runtime import Runtime
from supervisor.tracing import NO_TRACER, CallTracer
from transports.mcp import eras, jsonrpc, subscriptions, tasks
from transports.mcp.eras import Era
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RpcError
from transports.mcp.resources import RESOURCE_METHODS, Resources
from transports.mcp.scan_access import ScanAccess
from transports.mcp.scan_tools import ScanTools
from transports.mcp.session import NotificationSink, RequestContext, Session, clip, held, took_back_own_cancel
from transports.mcp.tasks import Tasks
from transports.mcp.tool_calls import ToolCalls

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "MAX_BATCH",
    "SERVED_METHODS",
    "Answer",
    "McpDispatcher",
]

logger = logging.getLogger(__name__)

Answer = dict[str, Any] | list[dict[str, Any]] | None
"""What `handle()` gives back: one response, a batch's responses, or None when nothing is to be sent."""

CacheScope = Literal["public", "private"]
"""Who may cache a tools/list or server/discover answer (2026-07-28)."""

SERVED_METHODS: Final[frozenset[str]] = frozenset(
    {"initialize", "ping", "logging/setLevel", "server/discover", "tools/list", "tools/call", "subscriptions/listen"}
)

WatchTools = Callable[[Callable[[], None]], Callable[[], None]]
"""Subscribes a listener to changes of the backend's tool list (called on any thread); returns the unsubscribe."""

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


def _package_version() -> str:
    try:
        return metadata.version("labrecon")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class McpDispatcher:
    """Serves MCP over any transport, backed by a `ToolBackend`."""

    def __init__(
        self,
        backend: ToolBackend,
        *,
        server_info: types.Implementation | None = None,
        instructions: str | None = DEFAULT_INSTRUCTIONS,
        list_ttl_ms: int = 60_000,
        cache_scope: CacheScope = "public",
        new_call_id: Callable[[], str] | None = None,
        scans: ScanAccess | None = None,
        tracer: CallTracer = NO_TRACER,
        watch_tools: WatchTools | None = None,
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
        self._watch_tools = watch_tools
        self._tasks = (
            Tasks(
                scans,
                server_info_stamp=self._server_info_stamp,
                scanner_tools=lambda: [info.name for info in backend.list_tools()],
            )
            if scans is not None
            else None
        )
        self._tool_calls = ToolCalls(
            backend,
            server_info_stamp=self._server_info_stamp,
            new_call_id=new_call_id or (lambda: uuid.uuid4().hex),
            scans=scans,
            tasks=self._tasks,
            tracer=tracer,
            listed=lambda: [info.name for info in self._listed_tools()],
        )
        self._scans = scans
        self._handlers: dict[str, Callable[[Session, RequestContext], dict[str, Any]]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "server/discover": self._discover,
            "tools/list": self._list_tools,
        }
        self._served = SERVED_METHODS
        # Where scans are kept, they are reachable as handle tools and as resources too.
        self._scan_tools = ScanTools(scans, server_info_stamp=self._server_info_stamp) if scans else None
        self._resources = Resources(scans) if scans is not None else None
        if self._resources is not None:
            self._handlers.update(self._resources.handlers())
            self._served = SERVED_METHODS | RESOURCE_METHODS

    @classmethod
    def for_backend(cls, backend: ToolBackend) -> McpDispatcher:
        """A dispatcher for `backend`, with the scan surface and call spans when the backend is a `Runtime`."""
        if isinstance(backend, Runtime):
            return cls(
                backend, scans=ScanAccess.of(backend), tracer=backend.tracer, watch_tools=backend.on_tools_changed
            )
        return cls(backend)

    @property
    def server_info(self) -> types.Implementation:
        return self._server_info

    # ------------------------------------------------------------------ entry points

    async def handle_text(self, session: Session, text: str | bytes, notify: NotificationSink) -> Answer:
        """Decode one framed message and handle it; undecodable text gets -32700 with a null id."""
        try:
            message = jsonrpc.decode(text)
        except RpcError as exc:
            logger.info("unparseable message: %s", exc.message, extra={"size": len(text)})
            return exc.response()
        return await self.handle(session, message, notify)

    async def handle(self, session: Session, message: Any, notify: NotificationSink) -> Answer:
        """Handle one decoded JSON value: a message object or a batch array.

        The answer is the response to a request, a list of responses for a
        batch (whose elements run concurrently, as JSON-RPC allows), or None
        when nothing must be sent: notifications, responses, a request the
        client cancelled.
        """
        if isinstance(message, list):
            return await self._handle_batch(session, message, notify)
        return await self._handle_one(session, message, notify, in_batch=False)

    def cancel_all(self, session: Session) -> int:
        """Cancel every call in flight on `session`, e.g. when its transport shuts down.

        Unlike a client's cancellation, these calls are still answered (with
        their `cancelled` outcome) to whoever is still listening.
        """
        return self._tool_calls.cancel_all(session)

    # ------------------------------------------------------------------ list changes

    @property
    def tools_can_change(self) -> bool:
        """Whether the backend says when its tool list changes (`tools.listChanged`)."""
        return self._watch_tools is not None

    def watch_tools(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` (on whichever thread changed them) whenever the listed tools change; the unsubscribe."""
        if self._watch_tools is None:
            return lambda: None
        return self._watch_tools(listener)

    def tools_changed(self, session: Session) -> None:
        """Tell `session`'s client that the tool list changed, where it listens; call on the session's loop.

        A handshake-era client hears it once initialized, on the stream outside any request (if it has
        one open); a 2026-07-28 client only on the `subscriptions/listen` streams that asked for it.
        """
        if session.era is Era.HANDSHAKE:
            if session.initialized and session.standalone is not None:
                session.standalone({"jsonrpc": "2.0", "method": subscriptions.TOOLS_LIST_CHANGED})
            return
        for subscription in list(session.subscriptions.values()):
            subscription.tools_changed()

    def end_subscriptions(self, session: Session) -> int:
        """End `session`'s `subscriptions/listen` streams gracefully, e.g. as its transport shuts down."""
        return subscriptions.end_all(session)

    # ------------------------------------------------------------------ framing level

    async def _handle_batch(self, session: Session, batch: list[Any], notify: NotificationSink) -> Answer:
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
        # Error policy, from the outside in: a message that is not a request is -32600; so is a request
        # reusing the id of one still in flight (answered with a null id, so the running request's reply
        # stays the only one carrying it); a method not served is -32601 before anything else is looked
        # at; params that do not fit the method's schema at the requested version, or an unknown tool,
        # are -32602.
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
                "request refused: %s", exc.message, extra={"method": clip(msg.method), "code": exc.code}
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
            logger.info("request refused: its id is already in flight", extra={"method": clip(msg.method)})
            return jsonrpc.error_response(
                None, INVALID_REQUEST, "Invalid Request: a request with this id is already in flight", {"id": msg.id}
            )
        if msg.method not in self._served and not (self._tasks is not None and msg.method in tasks.METHODS):
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {clip(msg.method)!r}", clip(msg.method))
        if in_batch and msg.method == "initialize":
            raise RpcError(INVALID_REQUEST, "Invalid Request: initialize must not be part of a JSON-RPC batch")
        ctx = self._admit(session, msg, notify)
        if msg.method == "tools/call":
            if self._tasks is not None:
                self._tasks.refuse_forbidden(ctx, lambda: [info.name for info in self._listed_tools()])
            if self._scan_tools is not None and self._scan_tools.serves(ctx.params["name"]):
                result = await self._scan_tools.call(session, ctx)
            else:
                result = await self._tool_calls.call(session, ctx)
            if result is None:
                return None
        elif msg.method == "subscriptions/listen":
            listened = await subscriptions.listen(session, ctx, tools_can_change=self.tools_can_change)
            if listened is None:
                return None  # cancelled by the client, who reads no answer
            result = self._shape(msg.method, ctx.version, listened)
        elif msg.method == "resources/read" and self._resources is not None:
            result = self._shape(msg.method, ctx.version, await self._resources.read(session, ctx))
        elif msg.method in tasks.METHODS and self._tasks is not None:
            with held(session, ctx, msg.method) as call:  # tasks/result may wait long: its id stays taken
                try:
                    result = await self._tasks.handle(session, ctx)
                except asyncio.CancelledError:
                    if not took_back_own_cancel(call):
                        raise
                    if call.cancelled_by_client:
                        return None  # the client will not read the answer
                    raise RpcError(INTERNAL_ERROR, "Internal error: the request was cancelled") from None
        else:
            result = self._shape(msg.method, ctx.version, self._handlers[msg.method](session, ctx))
        return jsonrpc.result_response(msg.id, result)

    def _admit(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> RequestContext:
        """Apply the era rules and the version's schema; lock the session's era on first use."""
        if msg.method == "initialize":
            return self._admit_initialize(session, msg, notify)
        if eras.is_enveloped(msg.params):
            return self._admit_enveloped(session, msg, notify)
        return self._admit_plain(session, msg, notify)

    def _admit_initialize(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> RequestContext:
        requested = (msg.params or {}).get("protocolVersion")
        if session.era is Era.MODERN or Era.HANDSHAKE not in session.allowed_eras:
            # The handshake does not exist at the versions this session speaks;
            # -32022 names them so an auto-negotiating client re-probes instead of failing.
            raise eras.unsupported_version(requested)
        if session.initialize_answered:
            raise RpcError(INVALID_REQUEST, "Invalid Request: the session is already initialized")
        version = eras.negotiate_handshake(requested)
        eras.validate_request("initialize", version, msg.params)
        return RequestContext(msg, version, Era.HANDSHAKE, None, notify)

    def _admit_enveloped(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> RequestContext:
        if session.era is Era.HANDSHAKE or Era.MODERN not in session.allowed_eras:
            raise RpcError(
                INVALID_REQUEST,
                "Invalid Request: this connection uses the initialize handshake; requests carrying the "
                "2026-07-28 _meta envelope are not accepted on it",
            )
        envelope = eras.read_envelope(msg.params)
        _validate(msg.method, envelope.protocol_version, msg.params)
        # Only a request that passed the envelope checks decides the era, so a
        # rejected probe leaves the handshake available to the same client.
        session.era = Era.MODERN
        session.protocol_version = envelope.protocol_version
        return RequestContext(
            msg, envelope.protocol_version, Era.MODERN, envelope.log_level, notify, envelope.client_info,
            envelope.client_capabilities,
        )

    def _admit_plain(self, session: Session, msg: jsonrpc.Request, notify: NotificationSink) -> RequestContext:
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
        _validate(msg.method, version, msg.params)
        return RequestContext(msg, version, Era.HANDSHAKE, None, notify)

    def _shape(self, method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
        try:
            return eras.shape_result(method, version, result, self._server_info_stamp)
        except ValidationError:
            logger.exception("the server built a result that does not fit the schema", extra={"method": method})
            raise RpcError(INTERNAL_ERROR, "Internal error: the server built an invalid result") from None

    # ------------------------------------------------------------------ method handlers

    def _capabilities(self, version: str) -> types.ServerCapabilities:
        return types.ServerCapabilities(
            tools=types.ToolsCapability(list_changed=self.tools_can_change),
            logging=types.LoggingCapability(),
            resources=types.ResourcesCapability() if self._scans is not None else None,
            **(self._tasks.capabilities(version) if self._tasks is not None else {}),
        )

    def _initialize(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
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
                "requested_version": clip(str(params.get("protocolVersion"))),
                "client": clip(str(client)),
            },
        )
        return types.InitializeResult(
            protocol_version=ctx.version,
            capabilities=self._capabilities(ctx.version),
            server_info=self._server_info,
            instructions=self._instructions,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _ping(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        return {}

    def _set_level(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        session.log_level = ctx.params["level"]
        return {}

    def _discover(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        return types.DiscoverResult(
            supported_versions=list(eras.MODERN_VERSIONS),
            capabilities=self._capabilities(ctx.version),
            instructions=self._instructions,
            ttl_ms=self._list_ttl_ms,
            cache_scope=self._cache_scope,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _list_tools(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        if ctx.params.get("cursor") is not None:
            raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor; tools/list returns a single page")
        return types.ListToolsResult(
            tools=self._tools(),
            ttl_ms=self._list_ttl_ms,
            cache_scope=self._cache_scope,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _tools(self) -> list[types.Tool]:
        """Every listed tool as the wire has it, marked for tasks where tasks are served."""
        tools = [_tool(info) for info in self._listed_tools()]
        return self._tasks.mark(tools) if self._tasks is not None else tools

    def _listed_tools(self) -> list[ToolInfo]:
        """The scanner tools, then the handle tools that reach their scans."""
        scanners = self._backend.list_tools()
        return scanners if self._scan_tools is None else [*scanners, *self._scan_tools.list_tools()]

    # ------------------------------------------------------------------ notifications

    def _on_notification(self, session: Session, msg: jsonrpc.Notification) -> None:
        if msg.method == "notifications/cancelled":
            self._tool_calls.cancel(session, msg.params or {})
        elif msg.method == "notifications/initialized":
            if session.initialize_answered:
                session.initialized = True
            else:
                logger.info("notifications/initialized before initialize; ignored")
        else:
            logger.debug("notification ignored", extra={"method": clip(msg.method)})



def _validate(method: str, version: str, params: dict[str, Any] | None) -> None:
    if method in tasks.METHODS:
        tasks.validate_request(method, version, params)
    else:
        eras.validate_request(method, version, params)


def _tool(info: ToolInfo) -> types.Tool:
    return types.Tool(
        name=info.name,
        title=info.title or None,
        description=info.description,
        input_schema=info.input_schema,
        output_schema=info.output_schema or None,
        annotations=types.ToolAnnotations.model_validate(info.annotations) if info.annotations else None,
    )
