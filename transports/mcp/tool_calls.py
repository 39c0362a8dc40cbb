"""The `tools/call` path: a call from admission to its result, with cancellation, progress and client logs.

Each call is a `PendingCall` on its session from the moment it is admitted until its result is built,
and it settles exactly once: with the backend's outcome, or - when the client cancelled it - with no
reply at all. A refused or failed run is a normal result with `isError: true`, so the model can read
why and correct itself. A scan that outlives the call's wait goes on; the answer then says where it
stands. Like the dispatcher, this module touches no socket and starts no thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, Final

import mcp_types as types

from actors.api import Caller, StartedScan, ToolBackend, UnknownTool
from actors.results import CallOutcome, ErrorType, InvalidCall
from supervisor.scans.records import ScanNotFound, ScanRecord
from supervisor.tracing import NO_TRACER, CallTracer, handing_over
from transports.logs import correlation
from transports.mcp import eras, jsonrpc, tasks
from transports.mcp.eras import Era
from transports.mcp.jsonrpc import INVALID_PARAMS, RpcError
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import NotificationSink, PendingCall, RequestContext, Session, clip, took_back_own_cancel
from transports.mcp.tasks import Tasks
from transports.mcp.tool_results import scan_call_result, working_result

__all__ = ["ToolCalls"]

logger = logging.getLogger(__name__)

_LOGGER_NAME: Final[str] = "labrecon"

ClientLog = Callable[[types.LoggingLevel, dict[str, Any]], None]


class ToolCalls:
    """Runs `tools/call` requests on a `ToolBackend` and keeps each one on its session until it settles."""

    def __init__(
        self,
        backend: ToolBackend,
        *,
        server_info_stamp: dict[str, Any],
        new_call_id: Callable[[], str],
        scans: ScanAccess | None = None,
        tasks: Tasks | None = None,
        tracer: CallTracer = NO_TRACER,
        listed: Callable[[], list[str]] | None = None,
    ) -> None:
        self._backend = backend
        # What an unknown name's error offers instead: every tool `tools/list` shows.
        self._listed = listed or (lambda: [info.name for info in backend.list_tools()])
        self._tracer = tracer
        self._server_info_stamp = server_info_stamp
        self._new_call_id = new_call_id
        self._scans = scans
        self._tasks = tasks

    async def call(self, session: Session, ctx: RequestContext) -> dict[str, Any] | None:
        """The result of one admitted `tools/call`, or None when the client cancelled it."""
        name: str = ctx.params["name"]
        arguments: dict[str, Any] = ctx.params.get("arguments") or {}
        key = jsonrpc.request_key(ctx.request.id)
        call = PendingCall(
            call_id=self._new_call_id(),
            tool=name,
            task=asyncio.current_task(),
            progress_token=_progress_token(ctx.params),
            runs_as_task=self._tasks is not None and tasks.augmented(ctx),
        )
        session.calls[key] = call
        client_log = self._client_log(session, ctx)
        with correlation(call.call_id):
            logger.debug("tool call started", extra={"tool": name, "request_id": ctx.request.id})
            client_log("debug", {"event": "call_started", "tool": name, "call_id": call.call_id})
            caller = ctx.caller_in(session)
            # The call's span starts here; the runtime takes it and ends it once the call is answered.
            span = self._tracer.start(name, call.call_id, owner=caller.owner, method="tools/call")
            with handing_over(span, call.call_id) as handover:
                try:
                    outcome = await self._run(call, arguments, ctx, caller, session)
                except BaseException as exc:
                    handover.settle(_never_admitted(call, exc))
                    raise
                finally:
                    _end_call(session, key, call)
            if outcome is not None:
                handover.settle(outcome)  # ends it only if the runtime never took it (refused on the way there)
            if outcome is None:  # the scan outlived the call's wait, and goes on
                if self._tasks is not None and (call.runs_as_task or tasks.declares_extension(ctx)):
                    assert call.scan_id is not None
                    return self._tasks.created(session, ctx, caller, call.scan_id)
                record, outcome = self._scan_as_it_stands(call, caller)
                if record is not None:
                    return self._still_working(record, ctx)
            result = self._finish(call, ctx, client_log, outcome)
            if result is not None:
                # Like an access log, the line is written once the reply is on its way: it must not delay it.
                # (call_soon runs it in a copy of this context, so it keeps the call's correlation id.)
                asyncio.get_running_loop().call_soon(_log_finished, call, outcome)
        return result

    def cancel(self, session: Session, params: dict[str, Any]) -> None:
        """`notifications/cancelled`: the client will not use the result, so none is sent."""
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
                    "reason": clip(reason) if isinstance(reason, str) else None,
                    "backend_accepted": accepted,
                },
            )

    def cancel_all(self, session: Session) -> int:
        """Cancel every call in flight on `session`; they are still answered, with their `cancelled` outcome."""
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

    # ------------------------------------------------------------------ one call

    async def _run(
        self, call: PendingCall, arguments: dict[str, Any], ctx: RequestContext, caller: Caller, session: Session
    ) -> CallOutcome | None:
        """The call's outcome, or None when its scan outlived the wait (it goes on; `call.scan_id` names it).

        A task call (2025-11-25 `params.task`) does not wait at all: its answer is the task.
        """
        progress = None
        if call.progress_token is not None:
            notify = self._tasks.progress_sink(session, call) if call.runs_as_task and self._tasks else ctx.notify
            progress = self._progress_sink(call, notify)
        started: StartedScan | None = None
        try:
            started = await self._backend.astart(
                call.tool, arguments, call_id=call.call_id, progress=progress, caller=caller
            )
            call.scan_id = started.scan_id
            if call.runs_as_task and started.scan_id is not None:
                return None
            done, _ = await asyncio.wait((started.outcome,), timeout=self._inline_wait(started, arguments))
            return started.outcome.result() if done else None
        except UnknownTool:
            # A tool the backend knows but does not list (disabled) was answered `tool_disabled` with the
            # reason, so a client with a stale list learns why; any other name is unknown here.
            listed = self._listed()
            raise RpcError(
                INVALID_PARAMS,
                f"Invalid params: unknown tool {clip(call.tool)!r}; available: {', '.join(listed) or 'none'}",
                {"available": listed},
            ) from None
        except InvalidCall as exc:
            return CallOutcome.failure(call.tool, call.call_id, ErrorType.VALIDATION, str(exc))
        except asyncio.CancelledError:
            if started is not None and not started.outcome.done():
                # Whoever stopped waiting (a client's cancel, the transport closing) stops the scan too.
                if not call.cancelled_by_client:
                    self._cancel_in_backend(call)
                started.outcome.cancel()
            if not took_back_own_cancel(call):  # our own fallback cancel: the backend did not know the call yet
                raise
            return CallOutcome.failure(call.tool, call.call_id, ErrorType.CANCELLED, "the call was cancelled")
        except Exception:
            logger.exception("tool backend raised", extra={"tool": call.tool})
            return CallOutcome.failure(
                call.tool, call.call_id, ErrorType.INTERNAL, "the server failed while running the call"
            )

    def _inline_wait(self, started: StartedScan, arguments: dict[str, Any]) -> float | None:
        """How long this call waits for its scan: until it ends, where nothing records scans."""
        if self._scans is None or started.scan_id is None:
            return None
        return self._scans.wait_sec(arguments.get("wait_sec"))

    def _scan_as_it_stands(self, call: PendingCall, caller: Caller) -> tuple[ScanRecord | None, CallOutcome]:
        """After the wait: the scan still working (record, -), or the outcome it reached meanwhile (None, outcome)."""
        assert self._scans is not None and call.scan_id is not None
        gone = CallOutcome.failure(call.tool, call.call_id, ErrorType.INTERNAL, "the scan was removed while running")
        try:
            record = self._scans.scans.get(caller, call.scan_id)
            if not record.status.terminal:
                return record, gone
            return None, self._scans.scans.outcome(caller, call.scan_id) or gone
        except ScanNotFound:
            return None, gone

    def _still_working(self, record: ScanRecord, ctx: RequestContext) -> dict[str, Any]:
        logger.info("tool call answered while its scan goes on", extra={"tool": record.tool, "scan_id": record.scan_id})
        result = working_result(record, structured_content=eras.has_feature(ctx.version, "structured_content"))
        return eras.stamp_modern(result, self._server_info_stamp) if ctx.version in eras.MODERN_VERSIONS else result

    def _finish(
        self, call: PendingCall, ctx: RequestContext, client_log: ClientLog, outcome: CallOutcome
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
        result = scan_call_result(
            outcome,
            version=ctx.version,
            scan_id=call.scan_id,
            max_chars=self._scans.settings.max_result_chars if self._scans is not None else None,
        )
        return eras.stamp_modern(result, self._server_info_stamp) if ctx.version in eras.MODERN_VERSIONS else result

    def _cancel_in_backend(self, call: PendingCall) -> bool:
        try:
            return bool(self._backend.cancel(call.call_id))
        except Exception:
            logger.exception("backend failed to cancel a call", extra={"tool": call.tool})
            return False

    def _cancel_task(self, call: PendingCall) -> None:
        if call.task is not None and not call.task.done() and not call.task_cancelled:
            call.task_cancelled = True
            call.task.cancel()

    # ------------------------------------------------------------------ notifications about a call

    def _progress_sink(self, call: PendingCall, notify: NotificationSink) -> Callable[..., None]:
        token = call.progress_token
        assert token is not None

        def progress(done: float, total: float | None = None, message: str | None = None) -> None:
            if (call.finished and not call.runs_as_task) or call.cancelled_by_client:
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
            _emit(
                notify,
                jsonrpc.notification(
                    "notifications/progress", params.model_dump(by_alias=True, mode="json", exclude_none=True)
                ),
            )

        return progress

    def _client_log(self, session: Session, ctx: RequestContext) -> ClientLog:
        """Log messages for the client, sent only at or above the level it asked for.

        Handshake era: the session's `logging/setLevel` (read when sending, so
        a change applies to calls already running). 2026-07-28: the level in
        this request's envelope; without one, nothing is sent.
        """

        def emit(level: types.LoggingLevel, data: dict[str, Any]) -> None:
            threshold = ctx.log_level if ctx.era is Era.MODERN else session.log_level
            if not eras.log_level_enabled(threshold, level):
                return
            params = types.LoggingMessageNotificationParams(level=level, logger=_LOGGER_NAME, data=data)
            _emit(
                ctx.notify,
                jsonrpc.notification(
                    "notifications/message", params.model_dump(by_alias=True, mode="json", exclude_none=True)
                ),
            )

        return emit


def _emit(notify: NotificationSink, message: dict[str, Any]) -> None:
    try:
        notify(message)
    except Exception:
        logger.exception("notification sink failed", extra={"method": message.get("method")})


def _end_call(session: Session, key: str, call: PendingCall) -> None:
    """The call is over: cancellations no longer apply and its request id is free again."""
    call.finished = True
    if session.calls.get(key) is call:
        del session.calls[key]


def _never_admitted(call: PendingCall, exc: BaseException) -> CallOutcome:
    """How a call the runtime never took ended, for its span: an unknown tool, or the wait given up."""
    if isinstance(exc, RpcError):
        return CallOutcome.failure(call.tool, call.call_id, ErrorType.NOT_FOUND, exc.message)
    return CallOutcome.failure(call.tool, call.call_id, ErrorType.CANCELLED, "the call was cancelled")


def _log_finished(call: PendingCall, outcome: CallOutcome) -> None:
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
