"""MCP tasks in both protocol eras, as views of the scan store: a task is a scan, its id the scan's id.

2025-11-25 (experimental tasks): a `tools/call` carrying `params.task` is answered at once with a
`CreateTaskResult`; `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel` read the scan back.
2026-07-28 (the `io.modelcontextprotocol/tasks` extension): a scanner call that outlives its inline
wait answers a flat `CreateTaskResult`, and only requests declaring the extension reach `tasks/*`.
Every read is bound to the caller, so another owner's task id answers exactly as an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import mcp_types as types

from actors.api import Caller
from supervisor.scans.records import INTERRUPTED, ScanNotFound, ScanRecord, ScanStatus, iso
from supervisor.scans.store import BadCursor
from transports.mcp import eras, jsonrpc
from transports.mcp.eras import Era
from transports.mcp.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import PendingCall, RequestContext, Session, clip
from transports.mcp.tool_results import scan_call_result

__all__ = [
    "EXTENSION",
    "METHODS",
    "RELATED_TASK",
    "TASKS_VERSION",
    "Tasks",
    "validate_request",
]

logger = logging.getLogger(__name__)

EXTENSION: Final[str] = "io.modelcontextprotocol/tasks"
RELATED_TASK: Final[str] = "io.modelcontextprotocol/related-task"
IMMEDIATE_RESPONSE: Final[str] = "io.modelcontextprotocol/model-immediate-response"

TASKS_VERSION: Final[str] = "2025-11-25"
"""The one handshake revision that defines tasks; older sessions never see them."""

MODERN_VERSION: Final[str] = eras.MODERN_VERSIONS[-1]

HANDSHAKE_METHODS: Final[frozenset[str]] = frozenset({"tasks/get", "tasks/result", "tasks/list", "tasks/cancel"})
MODERN_METHODS: Final[frozenset[str]] = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
METHODS: Final[frozenset[str]] = HANDSHAKE_METHODS | MODERN_METHODS

POLL_INTERVAL_MS: Final[int] = 2_000
LIST_PAGE: Final[int] = 50
CANCEL_SETTLE_SEC: Final[float] = 30.0
"""How long `tasks/cancel` (2025-11-25) waits for the killed scan to be settled before it answers."""


def validate_request(method: str, version: str, params: dict[str, Any] | None) -> None:
    """The version gate and the params shape of a `tasks/*` request (the schema package leaves them out)."""
    if version in eras.MODERN_VERSIONS:
        defined = MODERN_METHODS
    else:
        defined = HANDSHAKE_METHODS if version == TASKS_VERSION else frozenset()
    if method not in defined:
        raise RpcError(
            METHOD_NOT_FOUND, f"Method not found: {method!r} is not defined at protocol version {version}", method
        )
    params = params or {}
    if method == "tasks/list":
        if params.get("cursor") is not None and not isinstance(params["cursor"], str):
            raise _invalid(method, "cursor", "must be a string")
        return
    if not isinstance(params.get("taskId"), str):
        raise _invalid(method, "taskId", "a string is required")
    if method == "tasks/update" and not isinstance(params.get("inputResponses"), dict):
        raise _invalid(method, "inputResponses", "an object is required")


def augmented(ctx: RequestContext) -> bool:
    """A 2025-11-25 `tools/call` asking to run as a task (`params.task`); other revisions ignore the field."""
    return ctx.era is Era.HANDSHAKE and ctx.version == TASKS_VERSION and isinstance(ctx.params.get("task"), dict)


def declares_extension(ctx: RequestContext) -> bool:
    """A 2026-07-28 request whose own client capabilities name the tasks extension."""
    extensions = (ctx.client_capabilities or {}).get("extensions")
    return ctx.era is Era.MODERN and isinstance(extensions, dict) and isinstance(extensions.get(EXTENSION), dict)


class Tasks:
    """Serves `tasks/*` and turns calls into tasks, reading every scan through `ScanAccess`."""

    def __init__(
        self, access: ScanAccess, *, server_info_stamp: dict[str, Any], scanner_tools: Callable[[], list[str]]
    ) -> None:
        self._access = access
        self._server_info_stamp = server_info_stamp
        self._scanner_tools = scanner_tools
        # Scans keep their record until they expire: that is the task's time to live.

    # ------------------------------------------------------------------ what is advertised

    def _ttl_ms(self) -> int:
        """How long a task's result is kept: the store's retention in force."""
        return int(self._access.settings.retention_days * 86_400_000)

    def capabilities(self, version: str) -> dict[str, Any]:
        """The `ServerCapabilities` fields tasks add at `version`."""
        if version in eras.MODERN_VERSIONS:
            return {"extensions": {EXTENSION: {}}}
        if version != TASKS_VERSION:
            return {}
        return {
            "tasks": types.ServerTasksCapability(
                list=types.TasksListCapability(),
                cancel=types.TasksCancelCapability(),
                requests=types.ServerTasksRequestsCapability(
                    tools=types.TasksToolsCapability(call=types.TasksCallCapability())
                ),
            )
        }

    def mark(self, tools: list[types.Tool]) -> list[types.Tool]:
        """Scanner tools may run as tasks; every other tool (the scan-store tools) may not."""
        scanners = set(self._scanner_tools())
        optional = types.ToolExecution(task_support="optional")
        forbidden = types.ToolExecution(task_support="forbidden")
        return [
            tool.model_copy(update={"execution": optional if tool.name in scanners else forbidden}) for tool in tools
        ]

    def refuse_forbidden(self, ctx: RequestContext, listed: Callable[[], list[str]]) -> None:
        """A task-augmented call of a listed tool whose `taskSupport` is forbidden is -32601, as the spec asks."""
        name = ctx.params.get("name")
        if not augmented(ctx) or name in self._scanner_tools() or name not in listed():
            return
        raise RpcError(
            METHOD_NOT_FOUND,
            f"Method not found: tool {clip(str(name))!r} does not run as a task (execution.taskSupport is "
            "'forbidden'); call it without params.task",
            {"tool": name},
        )

    # ------------------------------------------------------------------ calls that become tasks

    def created(self, session: Session, ctx: RequestContext, caller: Caller, scan_id: str) -> dict[str, Any]:
        """The `CreateTaskResult` for a call whose scan goes on: nested at 2025-11-25, flat at 2026-07-28."""
        if ctx.era is Era.HANDSHAKE:
            self._announce_when_settled(session, caller, scan_id)  # watch first: no change can slip past
        record = self._access.scans.get(caller, scan_id)
        logger.info("tool call answered with a task", extra={"tool": record.tool, "scan_id": scan_id})
        if ctx.era is Era.MODERN:
            return eras.stamp_modern({"resultType": "task", **self._task(record, Era.MODERN)}, self._server_info_stamp)
        next_step = (
            f"{record.tool} runs as task {scan_id}; its result arrives through tasks/result "
            f"(or scan_status and scan_result with scan_id {scan_id!r})."
        )
        return {"task": self._task(record, Era.HANDSHAKE), "_meta": {IMMEDIATE_RESPONSE: next_step}}

    def progress_sink(self, session: Session, call: PendingCall) -> Callable[[dict[str, Any]], None]:
        """Where a task call's progress goes for the task's whole life: the session's standalone stream."""

        def send(note: dict[str, Any]) -> None:
            sink = session.standalone
            if sink is None:
                return
            if call.scan_id is not None:
                params = note.setdefault("params", {})
                params["_meta"] = {**params.get("_meta", {}), RELATED_TASK: {"taskId": call.scan_id}}
            sink(note)

        return send

    def _announce_when_settled(self, session: Session, caller: Caller, scan_id: str) -> None:
        done = self._access.scans.settled(caller, scan_id)
        if done is None:
            return  # already settled: the CreateTaskResult carries its final status
        loop = asyncio.get_running_loop()

        def settled(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is whoever listened
                loop.call_soon_threadsafe(self._announce, session, caller, scan_id)

        done.add_done_callback(settled)

    def _announce(self, session: Session, caller: Caller, scan_id: str) -> None:
        sink = session.standalone
        if sink is None:
            return
        try:
            record = self._access.scans.get(caller, scan_id)
            sink(jsonrpc.notification("notifications/tasks/status", self._task(record, Era.HANDSHAKE)))
        except ScanNotFound:
            return
        except Exception:
            logger.exception("task status notification failed", extra={"scan_id": scan_id})

    # ------------------------------------------------------------------ tasks/*

    async def handle(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        """Answer one admitted `tasks/*` request (its params already checked by `validate_request`)."""
        method = ctx.request.method
        caller = ctx.caller_in(session)
        if ctx.era is Era.MODERN:
            if not declares_extension(ctx):
                raise RpcError(
                    types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                    f"Missing required client capability: {method} needs the {EXTENSION} extension declared in "
                    "this request's client capabilities",
                    {"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
                )
            result = await self._modern(method, caller, ctx.params)
            return eras.stamp_modern(result, self._server_info_stamp)
        return await self._handshake(method, caller, ctx.params)

    async def _handshake(self, method: str, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        if method == "tasks/list":
            try:
                records, cursor = self._access.scans.page(caller, cursor=params.get("cursor"), limit=LIST_PAGE)
            except BadCursor as exc:
                raise RpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None
            listed: dict[str, Any] = {"tasks": [self._task(record, Era.HANDSHAKE) for record in records]}
            if cursor is not None:
                listed["nextCursor"] = cursor
            return listed
        task_id: str = params["taskId"]
        record = self._get(caller, task_id)
        if method == "tasks/get":
            return self._task(record, Era.HANDSHAKE)
        if method == "tasks/cancel":
            if record.status.terminal:
                raise RpcError(
                    INVALID_PARAMS,
                    f"Invalid params: task {clip(task_id)!r} is already {record.status.value}; only a working task "
                    "can be cancelled",
                )
            self._access.scans.cancel(caller, task_id)
            await self._settled(caller, task_id, CANCEL_SETTLE_SEC)
            after = self._get(caller, task_id)
            if after.status is ScanStatus.CANCELLED:
                return self._task(after, Era.HANDSHAKE)
            if after.status.terminal:  # it finished before the cancel reached it
                raise RpcError(
                    INVALID_PARAMS, f"Invalid params: task {clip(task_id)!r} is already {after.status.value}"
                )
            raise RpcError(INTERNAL_ERROR, f"Internal error: task {clip(task_id)!r} is still stopping; ask again")
        # tasks/result: block until the scan is settled, then answer exactly what the call would have.
        await self._settled(caller, task_id, None)
        result = await asyncio.to_thread(self._call_result, caller, self._get(caller, task_id))
        meta = result.get("_meta")
        result["_meta"] = {**(meta if isinstance(meta, dict) else {}), RELATED_TASK: {"taskId": task_id}}
        return result

    async def _modern(self, method: str, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        task_id: str = params["taskId"]
        record = self._get(caller, task_id)
        if method == "tasks/get":  # a completed task carries its result: read and shaped off the loop
            return await asyncio.to_thread(self._detailed, caller, record)
        if method == "tasks/cancel" and not record.status.terminal:
            # Cooperative: acknowledged now, the scan settles as `cancelled` once its process group is gone.
            self._access.scans.cancel(caller, task_id)
        # tasks/cancel of a finished task, and tasks/update (no task of ours ever waits for input): acknowledged.
        return {}

    # ------------------------------------------------------------------ shapes

    def _task(self, record: ScanRecord, era: Era) -> dict[str, Any]:
        status = record.status.value if era is Era.HANDSHAKE else _modern_status(record)
        task: dict[str, Any] = {
            "taskId": record.scan_id,
            "status": status,
            "createdAt": iso(record.created_at),
            "lastUpdatedAt": iso(record.updated_at),
        }
        if (message := _status_message(record)) is not None:
            task["statusMessage"] = message
        if era is Era.HANDSHAKE:
            task.update(ttl=self._ttl_ms(), pollInterval=POLL_INTERVAL_MS)
        else:
            task.update(ttlMs=self._ttl_ms(), pollIntervalMs=POLL_INTERVAL_MS)
        return task

    def _detailed(self, caller: Caller, record: ScanRecord) -> dict[str, Any]:
        """A 2026-07-28 `DetailedTask`: the call's result once completed, the JSON-RPC error once failed."""
        task = self._task(record, Era.MODERN)
        if task["status"] == "completed":
            outcome = self._access.scans.outcome(caller, record.scan_id)
            if outcome is None:  # a modern task is completed only with an outcome
                raise RpcError(INTERNAL_ERROR, "Internal error: a completed task without its result")
            result = scan_call_result(
                outcome, version=MODERN_VERSION, scan_id=record.scan_id,
                max_chars=self._access.settings.max_result_chars,
            )
            task["result"] = eras.stamp_modern(result, self._server_info_stamp)
        elif task["status"] == "failed":
            lost = _lost_call(record)
            task["error"] = {"code": lost.code, "message": lost.message, "data": lost.data}
        return task

    def _call_result(self, caller: Caller, record: ScanRecord) -> dict[str, Any]:
        outcome = self._access.scans.outcome(caller, record.scan_id)
        if outcome is None:
            raise _lost_call(record)
        return scan_call_result(
            outcome, version=TASKS_VERSION, scan_id=record.scan_id, max_chars=self._access.settings.max_result_chars
        )

    def _get(self, caller: Caller, task_id: str) -> ScanRecord:
        try:
            return self._access.scans.get(caller, task_id)
        except ScanNotFound as exc:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {str(exc).replace('scan', 'task', 1)}") from None

    async def _settled(self, caller: Caller, task_id: str, within: float | None) -> None:
        """Wait until the scan is settled in the store (at most `within` seconds)."""
        try:
            await self._access.scans.wait(caller, task_id, within)
        except ScanNotFound as exc:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {str(exc).replace('scan', 'task', 1)}") from None


def _modern_status(record: ScanRecord) -> str:
    """2026-07-28: a call answered with a result is `completed`, an `isError` one too; `failed` is kept
    for a call that never got its answer (the daemon stopped under it), the one JSON-RPC error a task has."""
    if record.status is not ScanStatus.FAILED:
        return record.status.value
    return "failed" if record.error_type == INTERRUPTED else "completed"


def _status_message(record: ScanRecord) -> str | None:
    if record.status is ScanStatus.WORKING:
        done = f" ({record.progress:g}% done)" if record.progress is not None else ""
        return f"{record.tool} is running{done}" + (f": {record.progress_message}" if record.progress_message else "")
    if record.error is not None:
        return f"{record.error_type or 'error'}: {record.error}"
    return f"{record.tool} {record.status.value}"


def _lost_call(record: ScanRecord) -> RpcError:
    """The JSON-RPC error of a call that was never answered: the daemon stopped while it ran."""
    message = f"Internal error: {record.error or 'the scan ended without a result'}"
    return RpcError(INTERNAL_ERROR, message, {"error_type": record.error_type, "scan_id": record.scan_id})


def _invalid(method: str, field: str, problem: str) -> RpcError:
    data = {"errors": [{"field": field, "problem": problem}]}
    return RpcError(INVALID_PARAMS, f"Invalid params for {method}: {field}: {problem}", data)
