"""The ops endpoints: probes, metrics, status, reload, fault injection, tool control and scans over HTTP.

Plain routes, mounted on the MCP HTTP app or served alone by `build_ops_app` (e.g. on a Unix socket
beside stdio). Every runtime call goes through `anyio.to_thread`, so waiting on the supervisor or the
scan store never stalls the loop's other clients. Only the probes are open: when tokens are configured,
the rest needs an admin one, except `/scans`, where a named token sees its own scans. Errors are
`{"error", "message"}` bodies: 400 bad input (naming the `field`), 403 a token that is not an admin's
(or a filter it may not use), 404 unknown tool, rule or scan, 422 a config the reload refused (naming
the key), 503 the runtime cannot answer. Who asks is `caller_of(request)`, the one place that decides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from functools import partial
from typing import Any, Protocol

import anyio.to_thread
import pykka
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.api import Caller, UnknownTool, local_user
from actors.results import CallOutcome, InvalidCall
from supervisor.config import ConfigError, Settings
from supervisor.runtime import RuntimeStopped
from supervisor.scans.records import ScanNotFound, ScanRecord, ScanStatus
from supervisor.scans.service import Scans
from supervisor.scans.store import BadCursor, StoreClosed
from supervisor.status import ReloadAttempt, Status
from transports.http.security import AUTHENTICATED, identity_of, security_middleware
from transports.http.server import HttpServer

__all__ = [
    "METRICS_CONTENT_TYPE",
    "OpsRuntime",
    "SessionCounts",
    "build_ops_app",
    "caller_of",
    "http_error",
    "ops_routes",
    "serve_ops_socket",
]

log = logging.getLogger("labrecon.ops")

# What `generate_latest` writes: the classic Prometheus text format.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_BODY_BYTES = 64 << 10  # control bodies are a handful of fields
MAX_PAGE = 200  # scans per page at most
DEFAULT_PAGE = 50
# How long a cancel waits for its scan to settle (TERM, the tool's kill grace, KILL) before it answers
# the record as it stands; below the CLI's default request timeout.
CANCEL_SETTLE_SEC = 8.0
MAX_REASON_CHARS = 500  # what a disabled tool's callers are told, at most


class OpsRuntime(Protocol):
    """The slice of `supervisor.runtime.Runtime` the ops endpoints use."""

    escalated: threading.Event  # set when the runtime gave up; liveness turns false
    escalation_reason: str | None

    def status(self) -> Status: ...

    def metrics_text(self) -> str: ...

    def inject(self, fault: Mapping[str, Any] | None = None, **fields: Any) -> int: ...

    def faults(self) -> list[dict[str, Any]]: ...

    def clear_faults(self, rule_id: int | None = None, *, tool: str | None = None) -> int: ...

    def reset(self, tool: str) -> str: ...

    def restart(self, tool: str) -> str: ...

    def force_breaker(self, tool: str, state: str) -> str: ...

    def reload(self, config: None = None, *, by: str = ...) -> ReloadAttempt: ...

    def disable_tool(self, tool: str, reason: str = "", *, by: str = ...) -> str: ...

    def enable_tool(self, tool: str, *, by: str = ...) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def scans(self) -> Scans: ...


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def caller_of(request: Request) -> Caller:
    """Who makes this ops request: every scan read or cancelled here is read or cancelled as them.

    A named token is its owner (an admin one sees every owner's scans). With no token configured the
    daemon is on loopback or an owner-only Unix socket: whoever gets this far is the local operator.
    """
    identity = identity_of(request.scope)
    if identity is None:
        return Caller(owner=local_user(), admin=True)
    return Caller(owner=identity.owner, admin=identity.admin)


Handler = Callable[[Request], Awaitable[Response]]


SessionCounts = Callable[[], Mapping[str, int]]
"""Open MCP sessions per transport, merged into `/status` by whoever serves them."""


def ops_routes(runtime: OpsRuntime, sessions: SessionCounts | None = None) -> list[Route]:
    """The ops routes bound to one runtime, ready to mount on any Starlette app.

    `sessions`, when given, fills the status snapshot's `sessions` field
    (the runtime knows nothing of the transports in front of it).
    """

    async def blocking(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))

    def guarded(handler: Handler, *, owners_too: bool = False) -> Handler:
        """Turn the runtime's typed errors into JSON answers, the same way on every route.

        Only operators pass, except on `owners_too` routes (the scans), where any authenticated
        caller does and sees what `caller_of` lets them.
        """

        async def endpoint(request: Request) -> Response:
            if not (_is_operator(request) or (owners_too and _is_authenticated(request))):
                return _error(403, "forbidden", "the ops endpoints need an admin token; this one is not")
            try:
                return await handler(request)
            except _BadRequest as exc:
                kind = {400: "invalid", 403: "forbidden"}.get(exc.status, "too_large")
                return _error(exc.status, kind, str(exc), field=exc.field)
            except InvalidCall as exc:
                return _error(400, "invalid", str(exc), field=exc.field)
            except UnknownTool as exc:
                return _error(404, "not_found", str(exc), known=exc.known)
            except ConfigError as exc:
                return _error(422, "invalid_config", str(exc))
            except ScanNotFound as exc:
                return _error(404, "not_found", str(exc))
            except (pykka.ActorDeadError, pykka.Timeout, RuntimeStopped, StoreClosed) as exc:
                log.warning("ops request %s %s: runtime unavailable: %s", request.method, request.url.path, exc)
                return _error(503, "unavailable", "the runtime is not answering (stopped or overloaded)")

        endpoint.__name__ = handler.__name__
        return endpoint

    async def livez(request: Request) -> Response:
        if runtime.escalated.is_set():
            reason = runtime.escalation_reason or "the runtime gave up"
            return JSONResponse({"live": False, "reason": reason}, status_code=503)
        return JSONResponse({"live": True})

    async def readyz(request: Request) -> Response:
        try:
            status: Status = await blocking(runtime.status)
        except (pykka.ActorDeadError, pykka.Timeout, RuntimeStopped):
            return JSONResponse({"ready": False, "status": "unavailable"}, status_code=503)
        health = status.health
        body: dict[str, Any] = {"ready": health.ready, "status": health.status}
        # Anyone may ask whether the daemon is ready; only an operator learns why not.
        if "verbose" in request.query_params and _is_operator(request):
            body["checks"] = [check.model_dump(mode="json", exclude={"data"}) for check in health.checks]
            if status.cluster is not None:
                body["pools"] = [
                    {"name": pool.name, "live": pool.live, "nodes": sum(node.alive for node in pool.nodes)}
                    for pool in status.cluster.pools
                ]
        return JSONResponse(body, status_code=200 if health.ready else 503)

    async def healthz(request: Request) -> Response:
        """One health summary with every check's detail, for an operator; 503 while unhealthy."""
        health = (await blocking(runtime.status)).health
        body = {
            "status": health.status,
            "live": health.live,
            "ready": health.ready,
            "checks": [check.model_dump(mode="json", exclude={"data"}) for check in health.checks],
        }
        return JSONResponse(body, status_code=503 if health.status == "unhealthy" else 200)

    async def metrics(request: Request) -> Response:
        text: str = await blocking(runtime.metrics_text)
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    async def status(request: Request) -> Response:
        snapshot: Status = await blocking(runtime.status)
        if sessions is not None:
            snapshot = snapshot.model_copy(update={"sessions": {**snapshot.sessions, **sessions()}})
        return JSONResponse(snapshot.model_dump(mode="json"))

    async def list_faults(request: Request) -> Response:
        return JSONResponse({"faults": await blocking(runtime.faults)})

    async def inject_fault(request: Request) -> Response:
        body = await _json_object(request)
        rule_id: int = await blocking(runtime.inject, body)
        rules = await blocking(runtime.faults)
        rule = next((r for r in rules if r.get("id") == rule_id), {"id": rule_id})
        return JSONResponse({"id": rule_id, "fault": rule}, status_code=201)

    async def clear_faults(request: Request) -> Response:
        tool = request.query_params.get("tool") or None
        raw_id = request.path_params.get("rule_id")
        cleared: int = await blocking(runtime.clear_faults, raw_id, tool=tool)
        if raw_id is not None and cleared == 0:
            return _error(404, "not_found", f"no fault rule with id {raw_id}" + (f" for {tool}" if tool else ""))
        return JSONResponse({"cleared": cleared})

    def control(action: str) -> Handler:
        async def handler(request: Request) -> Response:
            tool = request.path_params["name"]
            if action == "breaker":
                body = await _json_object(request)
                state = body.get("state")
                if not isinstance(state, str):
                    raise InvalidCall("body must be {\"state\": \"open\"} or {\"state\": \"closed\"}", field="state")
                message = await blocking(runtime.force_breaker, tool, state)
            else:
                message = await blocking(getattr(runtime, action), tool)
            log.info("operator %s on %s: %s", action, tool, message)
            return JSONResponse({"tool": tool, "action": action, "message": message})

        handler.__name__ = f"tool_{action}"
        return handler

    async def reload(request: Request) -> Response:
        """Re-read the daemon's config file and put it in force; 422 names the key of a config refused."""
        who = caller_of(request).owner
        attempt: ReloadAttempt = await blocking(runtime.reload, by=who)
        return JSONResponse(attempt.model_dump(mode="json"))

    async def disable_tool(request: Request) -> Response:
        tool, reason = request.path_params["name"], await _reason(request)
        message: str = await blocking(runtime.disable_tool, tool, reason, by=caller_of(request).owner)
        log.info("operator disable on %s: %s", tool, message)
        return JSONResponse({"tool": tool, "action": "disable", "message": message})

    async def enable_tool(request: Request) -> Response:
        tool = request.path_params["name"]
        message: str = await blocking(runtime.enable_tool, tool, by=caller_of(request).owner)
        log.info("operator enable on %s: %s", tool, message)
        return JSONResponse({"tool": tool, "action": "enable", "message": message})

    async def list_scans(request: Request) -> Response:
        caller = caller_of(request)
        query = _ScanQuery.of(request, caller)
        try:
            records, next_cursor = await blocking(
                runtime.scans.page, query.caller, tool=query.tool, status=query.status, cursor=query.cursor,
                limit=query.limit,
            )
        except BadCursor as exc:
            raise _BadRequest(str(exc), field="cursor") from None
        return JSONResponse({"scans": [r.to_json() for r in records], "next_cursor": next_cursor})

    async def show_scan(request: Request) -> Response:
        caller, scan_id = caller_of(request), request.path_params["scan_id"]
        record: ScanRecord = await blocking(runtime.scans.get, caller, scan_id)
        return JSONResponse(await blocking(_with_outcome, runtime.scans, caller, record))

    async def cancel_scan(request: Request) -> Response:
        caller, scan_id = caller_of(request), request.path_params["scan_id"]
        requested: bool = await blocking(runtime.scans.cancel, caller, scan_id)
        if requested:
            log.info("operator %s cancelled scan %s", caller.owner, scan_id)
        settled: Future[CallOutcome] | None = await blocking(runtime.scans.settled, caller, scan_id)
        if settled is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(settled)), CANCEL_SETTLE_SEC)
        record: ScanRecord = await blocking(runtime.scans.get, caller, scan_id)
        answer = await blocking(_with_outcome, runtime.scans, caller, record)
        return JSONResponse({**answer, "cancel_requested": requested})

    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", guarded(healthz), methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/status", guarded(status), methods=["GET"]),
        Route("/faults", guarded(list_faults), methods=["GET"]),
        Route("/faults", guarded(inject_fault), methods=["POST"]),
        Route("/faults", guarded(clear_faults), methods=["DELETE"]),
        Route("/faults/{rule_id:int}", guarded(clear_faults), methods=["DELETE"]),
        Route("/tools/{name}/reset", guarded(control("reset")), methods=["POST"]),
        Route("/tools/{name}/restart", guarded(control("restart")), methods=["POST"]),
        Route("/tools/{name}/breaker", guarded(control("breaker")), methods=["POST"]),
        Route("/tools/{name}/disable", guarded(disable_tool), methods=["POST"]),
        Route("/tools/{name}/enable", guarded(enable_tool), methods=["POST"]),
        Route("/reload", guarded(reload), methods=["POST"]),
        Route("/scans", guarded(list_scans, owners_too=True), methods=["GET"]),
        Route("/scans/{scan_id}", guarded(show_scan, owners_too=True), methods=["GET"]),
        Route("/scans/{scan_id}/cancel", guarded(cancel_scan, owners_too=True), methods=["POST"]),
    ]


class _ScanQuery:
    """The query of `GET /scans`, checked: each bad value is a 400 that names its field."""

    def __init__(
        self, caller: Caller, tool: str | None, status: ScanStatus | None, cursor: str | None, limit: int
    ) -> None:
        self.caller, self.tool, self.status, self.cursor, self.limit = caller, tool, status, cursor, limit

    @classmethod
    def of(cls, request: Request, caller: Caller) -> _ScanQuery:
        params = request.query_params
        unknown = sorted(set(params) - {"tool", "status", "owner", "cursor", "limit"})
        if unknown:
            raise _BadRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        tool = params.get("tool")
        if tool is not None and not tool:
            raise _BadRequest("tool must be a tool name, e.g. nmap", field="tool")
        status = None
        if "status" in params:
            try:
                status = ScanStatus(params["status"])
            except ValueError:
                known = ", ".join(s.value for s in ScanStatus)
                raise _BadRequest(f"status must be one of {known}", field="status") from None
        owner = params.get("owner")
        if owner is not None:
            if not owner:
                raise _BadRequest("owner must be an owner's name", field="owner")
            if not caller.admin and owner != caller.owner:
                raise _BadRequest("only an admin may list another owner's scans", status=403, field="owner")
            caller = Caller(owner=owner, admin=False, detail=caller.detail)  # read as that owner would
        limit = DEFAULT_PAGE
        if "limit" in params:
            try:
                limit = int(params["limit"])
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_PAGE:
                raise _BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}", field="limit")
        return cls(caller, tool, status, params.get("cursor") or None, limit)


def _with_outcome(scans: Scans, caller: Caller, record: ScanRecord) -> dict[str, Any]:
    """The record, and under `outcome` the full outcome once the scan has finished (null while it runs)."""
    outcome = scans.outcome(caller, record.scan_id) if record.status.terminal else None
    return {**record.to_json(), "outcome": outcome.model_dump(mode="json") if outcome is not None else None}


def build_ops_app(
    runtime: OpsRuntime, settings: Settings | Callable[[], Settings], sessions: SessionCounts | None = None
) -> Starlette:
    """The ops endpoints alone, behind the same Origin and token checks as the MCP app.

    Meant for the Unix-socket ops server (whose socket file is owner-only);
    a configured token is still required there, so one credential works
    for every way into the daemon. Given `lambda: runtime.settings`, the checks follow reloads.
    """
    return Starlette(
        routes=ops_routes(runtime, sessions),
        middleware=[security_middleware(settings, check_host=False)],  # no browser reaches a Unix socket
        exception_handlers={HTTPException: http_error},
    )


def serve_ops_socket(
    runtime: OpsRuntime, settings: Settings, sessions: SessionCounts | None = None
) -> HttpServer | None:
    """Serve the ops app on `http.ops_socket` when one is configured; the caller stops it.

    Its token checks follow the runtime's config in force, so a token rotated by a reload works here too.
    """
    if settings.http.ops_socket is None:
        return None
    app = build_ops_app(runtime, lambda: runtime.settings, sessions)
    return HttpServer.start(app, uds=settings.http.ops_socket, name="ops")


# --- helpers ---------------------------------------------------------------------------


def _is_authenticated(request: Request) -> bool:
    return bool(request.scope.get("state", {}).get(AUTHENTICATED, True))


def _is_operator(request: Request) -> bool:
    """Authenticated, and an admin whenever tokens are configured (with none, the middleware let the caller in)."""
    identity = identity_of(request.scope)
    return _is_authenticated(request) and (identity is None or identity.admin)


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, as JSON like every other error here."""
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": kind, "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _reason(request: Request) -> str:
    """The optional `{"reason": "..."}` of a disable; an empty body gives none."""
    raw = await _body(request)
    if not raw.strip():
        return ""
    body = _parsed(raw)
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise _BadRequest('request body must be {"reason": "..."} or empty', field="reason")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise _BadRequest(f"reason must be text of at most {MAX_REASON_CHARS} characters", field="reason")
    return " ".join(reason.split())  # one line, as callers and the status table show it


async def _body(request: Request) -> bytes:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest(f"request body is larger than {MAX_BODY_BYTES} bytes", status=413)
    return bytes(raw)


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("request body is not valid JSON") from None


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await _body(request)
    if not raw.strip():
        raise _BadRequest("request body must be a JSON object")
    body = _parsed(raw)
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    return body
