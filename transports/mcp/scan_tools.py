"""The handle tools: `scans_list`, `scan_status`, `scan_result` and `scan_cancel`, answered from the scans.

Each reads through `Scans`, bound to the caller, so another owner's scan id is answered exactly like an
unknown one. A model can act on every failure: bad arguments come back as the scanner tools' own
`validation` result, an id that is not there as a `not_found` result saying where to find ids. No
answer's text is longer than `[scans] max_result_chars`; the rest is paged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from actors.api import Caller, ToolInfo
from actors.results import RECOVERY, CallError, CallOutcome, ErrorType
from actors.tools.base import validation_message
from actors.tools.schema import compact_schema
from supervisor.scans.records import ScanNotFound, ScanRecord, ScanStatus, scan_subject
from supervisor.scans.store import BadCursor
from supervisor.scans.views import MAX_LIMIT, PAGE_SCHEMA, SUMMARY_SCHEMA, View, result_page, summarize
from transports.mcp import eras
from transports.mcp.resources import raw_uri, scan_uri
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import PendingCall, RequestContext, Session, held, took_back_own_cancel
from transports.mcp.tool_results import call_tool_result

__all__ = ["SCAN_TOOL_NAMES", "ScanTools", "next_step"]

logger = logging.getLogger(__name__)

DEFAULT_LIMIT: Final[int] = 100
"""Rows one scan_result page holds when the call names no limit (fewer where the text budget ends first)."""

_ScanId = Annotated[str, Field(min_length=1, max_length=128, description="The scan_id a scanner call answered with.")]
_Status = Literal["working", "completed", "failed", "cancelled"]


def _listed(value: Any) -> Any:
    """A filter given as one value means a list of one."""
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ScansListArguments(_Arguments):
    tool: str | None = Field(default=None, max_length=64, description="Only scans of this tool, e.g. nmap.")
    status: _Status | None = Field(default=None, description="Only scans in this status.")
    cursor: str | None = Field(
        default=None, max_length=512, description="The next_cursor of the previous page, to read the next one."
    )
    limit: int = Field(default=20, ge=1, le=100, description="How many scans per page (newest first).")


class ScanStatusArguments(_Arguments):
    scan_id: _ScanId
    wait_sec: float = Field(
        default=0, ge=0, description="Wait up to this many seconds for the scan to finish (capped by the server)."
    )


class ScanResultArguments(_Arguments):
    scan_id: _ScanId
    hosts: Annotated[list[str] | None, BeforeValidator(_listed)] = Field(
        default=None, max_length=256, description="Only these hosts: addresses, networks or host names."
    )
    ports: Annotated[list[Annotated[int, Field(ge=0, le=65535)]] | None, BeforeValidator(_listed)] = Field(
        default=None, max_length=512, description="Only these port numbers."
    )
    state: str | None = Field(
        default=None, max_length=32,
        description="Only rows in this state: a port state (open), a host status (up), an HTTP status or class (3xx).",
    )
    service: str | None = Field(default=None, max_length=64, description="Only ports whose service name has this.")
    offset: int | None = Field(default=None, ge=0, description="Where the page starts: the last next_offset.")
    limit: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description=f"Rows per page at most (default {DEFAULT_LIMIT})."
    )

    @property
    def wants_page(self) -> bool:
        """Any filter or paging asks for the detail; without them the answer is the summary."""
        given = (self.hosts, self.ports, self.state, self.service, self.offset, self.limit)
        return any(value is not None for value in given)


class ScanCancelArguments(_Arguments):
    scan_id: _ScanId


_RECORD_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "scan_id": {"type": "string"},
        "tool": {"type": "string"},
        "status": {"enum": [status.value for status in ScanStatus]},
        "target": {"type": ["string", "null"]},
        "created_at": {"type": "string", "description": "ISO 8601, UTC."},
        "updated_at": {"type": "string", "description": "ISO 8601, UTC."},
        "progress": {"type": ["number", "null"], "description": "Percent done."},
        "error_type": {"type": ["string", "null"]},
    },
    "required": ["scan_id", "tool", "status"],
}

_STATUS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        **_RECORD_SCHEMA["properties"],
        "resolved_targets": {"type": "array", "items": {"type": "string"}},
        "argv": {"type": "array", "items": {"type": "string"}},
        "progress_message": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "next_step": {"type": "string", "description": "What to call next."},
    },
    "required": ["scan_id", "tool", "status", "next_step"],
}

_LIST_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "scans": {"type": "array", "items": _RECORD_SCHEMA},
        "next_cursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page."},
    },
    "required": ["scans", "next_cursor"],
}

_RESULT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "The summary (no filters or paging asked), a page of the result, or where a running scan stands.",
    "anyOf": [SUMMARY_SCHEMA, PAGE_SCHEMA, _STATUS_SCHEMA],
}

_READS: Final[dict[str, Any]] = {
    "readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False,
}


def _info(name: str, title: str, description: str, arguments: type[_Arguments], output: dict[str, Any],
          annotations: dict[str, Any]) -> ToolInfo:
    schema = compact_schema(arguments.model_json_schema())
    schema["type"] = "object"
    return ToolInfo(name, title, description, schema, output, {"title": title, **annotations})


TOOL_INFOS: Final[tuple[ToolInfo, ...]] = (
    _info(
        "scans_list", "List your scans",
        "Your scans, newest first: id, tool, target, status and progress. Filter by tool or status; "
        "pass next_cursor as cursor for the next page.",
        ScansListArguments, _LIST_SCHEMA, _READS,
    ),
    _info(
        "scan_status", "A scan's status",
        "Where a scan stands (working, completed, failed, cancelled) and its progress. With wait_sec it "
        "waits up to that long for the scan to finish: use it on a scanner call that answered 'working'.",
        ScanStatusArguments, _STATUS_SCHEMA, _READS,
    ),
    _info(
        "scan_result", "A scan's result, in pieces",
        "A finished scan's result. Without filters: a compact summary (hosts up, open ports per host with "
        "service and version, findings) and how much more there is. With hosts, ports, state or service "
        "filters, or offset/limit: that part of the result, one page at a time (follow next_offset). The "
        "whole result is also the resource labrecon://scans/{scan_id}.",
        ScanResultArguments, _RESULT_SCHEMA, _READS,
    ),
    _info(
        "scan_cancel", "Cancel a scan",
        "Stop a running scan (its processes are killed) and answer its final status. A finished scan is "
        "left as it is.",
        ScanCancelArguments, _STATUS_SCHEMA,
        {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True, "openWorldHint": False},
    ),
)

SCAN_TOOL_NAMES: Final[frozenset[str]] = frozenset(info.name for info in TOOL_INFOS)


class _Answer:
    """What one handle-tool call answers: structured content and the text that carries it."""

    def __init__(self, structured: dict[str, Any], text: str, *, as_json: bool = True) -> None:
        self.structured = structured
        self.text = text
        self.as_json = as_json  # append the structured content as JSON text, for clients before structuredContent


class ScanTools:
    """Answers `tools/call` for the handle tools; each call stays on its session until it is answered."""

    def __init__(self, access: ScanAccess, *, server_info_stamp: dict[str, Any]) -> None:
        self._access = access
        self._server_info_stamp = server_info_stamp
        self._tools: dict[str, Callable[[Any, Caller], Awaitable[_Answer]]] = {
            "scans_list": self._scans_list,
            "scan_status": self._scan_status,
            "scan_result": self._scan_result,
            "scan_cancel": self._scan_cancel,
        }
        self._arguments: dict[str, type[_Arguments]] = {
            "scans_list": ScansListArguments,
            "scan_status": ScanStatusArguments,
            "scan_result": ScanResultArguments,
            "scan_cancel": ScanCancelArguments,
        }

    def serves(self, name: Any) -> bool:
        return name in SCAN_TOOL_NAMES

    def list_tools(self) -> list[ToolInfo]:
        return list(TOOL_INFOS)

    async def call(self, session: Session, ctx: RequestContext) -> dict[str, Any] | None:
        """The `CallToolResult` of one handle-tool call, or None when the client cancelled it."""
        name: str = ctx.params["name"]
        with held(session, ctx, name) as call:  # so notifications/cancelled reaches a waiting scan_status
            try:
                result = await self._answer(
                    call, ctx.params.get("arguments") or {}, ctx.caller_in(session), ctx.version
                )
            except asyncio.CancelledError:
                if not took_back_own_cancel(call):
                    raise
                result = call_tool_result(
                    CallOutcome.failure(name, call.call_id, ErrorType.CANCELLED, "the call was cancelled"),
                    structured_content=eras.has_feature(ctx.version, "structured_content"),
                )
        if call.cancelled_by_client:
            return None  # the client said it will not read the answer
        return eras.stamp_modern(result, self._server_info_stamp) if ctx.version in eras.MODERN_VERSIONS else result

    async def _answer(self, call: PendingCall, arguments: Any, caller: Caller, version: str) -> dict[str, Any]:
        structured_content = eras.has_feature(version, "structured_content")
        try:
            if not isinstance(arguments, dict):
                raise _Invalid(f"{call.tool} arguments must be a JSON object")
            try:
                parsed = self._arguments[call.tool].model_validate(arguments)
            except ValidationError as exc:
                raise _Invalid(f"invalid {call.tool} arguments: {validation_message(exc)[0]}") from None
            answer = await self._tools[call.tool](parsed, caller)
        # An error answer carries no structuredContent: the tool's output schema describes its results only.
        except _Invalid as exc:
            outcome = CallOutcome.failure(call.tool, call.call_id, ErrorType.VALIDATION, str(exc))
            return call_tool_result(outcome, structured_content=False)
        except ScanNotFound as exc:
            return call_tool_result(_not_found(call, exc), structured_content=False)
        content = [{"type": "text", "text": answer.text}]
        if answer.as_json or not structured_content:
            content.append({"type": "text", "text": json.dumps(answer.structured, separators=(",", ":"))})
        result: dict[str, Any] = {"content": content, "isError": False}
        if structured_content:
            result["structuredContent"] = answer.structured
        return result

    # ------------------------------------------------------------------ the tools

    async def _scans_list(self, arguments: ScansListArguments, caller: Caller) -> _Answer:
        status = ScanStatus(arguments.status) if arguments.status is not None else None
        try:
            records, next_cursor = self._access.scans.page(
                caller, tool=arguments.tool, status=status, cursor=arguments.cursor, limit=arguments.limit
            )
        except BadCursor as exc:
            raise _Invalid(f"invalid scans_list arguments: cursor: {exc}") from None
        # Records are added while the answer (text, the JSON as text, structuredContent) stays within
        # max_result_chars; the rest is the next page.
        budget = self._access.settings.max_result_chars - _LIST_MARGIN
        lines: list[str] = []
        briefs: list[dict[str, Any]] = []
        used = 0
        for index, record in enumerate(records):
            line, brief = _line(record), _brief(record)
            cost = len(line) + 1 + 2 * (len(json.dumps(brief, separators=(",", ":"), ensure_ascii=False)) + 1)
            if briefs and used + cost > budget:
                next_cursor = self._access.scans.cursor_after(records[index - 1])
                break
            lines.append(line)
            briefs.append(brief)
            used += cost
        if not lines:
            lines = ["No scans match."]
        if next_cursor is not None:
            lines.append(f"More scans: call scans_list again with cursor {next_cursor!r}.")
        return _Answer({"scans": briefs, "next_cursor": next_cursor}, "\n".join(lines))

    async def _scan_status(self, arguments: ScanStatusArguments, caller: Caller) -> _Answer:
        wait = self._access.wait_sec(arguments.wait_sec)
        record = await self._access.scans.wait(caller, arguments.scan_id, wait)
        return _status_answer(record)

    async def _scan_result(self, arguments: ScanResultArguments, caller: Caller) -> _Answer:
        record = self._access.scans.get(caller, arguments.scan_id)
        if not record.status.terminal:
            return _status_answer(record)
        # Reading a big outcome and building its view take tens of milliseconds: off the loop that serves every client.
        view = await asyncio.to_thread(self._view, caller, arguments)
        # The view's text and its JSON together fit max_chars; the JSON goes as text only to older clients.
        return _Answer(view.structured, view.text, as_json=False)

    def _view(self, caller: Caller, arguments: ScanResultArguments) -> View:
        outcome = self._access.scans.outcome(caller, arguments.scan_id)
        if outcome is None:
            raise ScanNotFound(arguments.scan_id)  # expired between the two reads
        max_chars = self._access.settings.max_result_chars
        if arguments.wants_page:
            return result_page(
                outcome, hosts=arguments.hosts, ports=arguments.ports, state=arguments.state,
                service=arguments.service, offset=arguments.offset or 0, limit=arguments.limit or DEFAULT_LIMIT,
                max_chars=max_chars,
            )
        return summarize(outcome, max_chars=max_chars)

    async def _scan_cancel(self, arguments: ScanCancelArguments, caller: Caller) -> _Answer:
        scans = self._access.scans
        if scans.settled(caller, arguments.scan_id) is not None:  # it runs here
            scans.cancel(caller, arguments.scan_id)
            # The kill is quick; the bound only guards against a scan that will not settle.
            return _status_answer(await scans.wait(caller, arguments.scan_id, self._access.settings.max_wait_sec))
        record = scans.get(caller, arguments.scan_id)
        if record.status.terminal:
            return _status_answer(record)
        # Working, but not here: another labrecon sharing the store runs it, and only it can stop it.
        answer = _status_answer(record)
        elsewhere = (
            "Another labrecon process sharing the scan store runs this scan; only it can stop it. "
            f"Call scan_status with scan_id {record.scan_id!r} to follow it."
        )
        return _Answer({**answer.structured, "next_step": elsewhere}, f"Scan {record.scan_id}: working. {elsewhere}")


_LIST_MARGIN = 400  # the closing line, and the cursor three times over (text, JSON text, structuredContent)


class _Invalid(ValueError):
    """Arguments a handle tool refuses; answered like a scanner tool's validation error."""


def _not_found(call: PendingCall, exc: ScanNotFound) -> CallOutcome:
    error = CallError(
        error_type=ErrorType.NOT_FOUND,
        message=str(exc),
        recovery_suggestion=(
            "Pass a scan_id exactly as a scanner call or scans_list answered it; scans_list shows the scans "
            "you can reach. Finished scans expire after a while: run the scan again if it is gone."
        ),
    )
    return CallOutcome(tool=call.tool, call_id=call.call_id, ok=False, error=error)


def next_step(record: ScanRecord) -> str:
    """What a model should call next for a scan in this state."""
    scan_id = record.scan_id
    if record.status is ScanStatus.WORKING:
        done = f" ({record.progress:g}% done)" if record.progress is not None else ""
        return (
            f"It is still running{done}: call scan_status with scan_id {scan_id!r} and wait_sec to wait for it, "
            "then scan_result; scan_cancel stops it."
        )
    if record.status is ScanStatus.COMPLETED:
        return (
            f"Call scan_result with scan_id {scan_id!r} for a summary, with hosts/ports/state/service "
            f"filters or offset/limit for the detail; the whole result is {scan_uri(scan_id)}, the tool's own "
            f"output {raw_uri(scan_id)}."
        )
    if record.status is ScanStatus.CANCELLED:
        return "Run the scanner tool again if the result is still wanted."
    error_type = record.error_type or "internal"
    known = {item.value: item for item in ErrorType}
    advice = RECOVERY[known[error_type]] if error_type in known else "Run the scan again."
    return f"Why ({error_type}): {record.error or 'no reason recorded'}. {advice}"


def _brief(record: ScanRecord) -> dict[str, Any]:
    whole = record.to_json()
    return {key: whole[key] for key in _RECORD_SCHEMA["properties"]}


def _line(record: ScanRecord) -> str:
    subject = scan_subject(record.tool, record.target)
    progress = f", {record.progress:g}%" if record.progress is not None and not record.status.terminal else ""
    return f"- {record.scan_id}: {subject}, {record.status.value}{progress}, started {record.to_json()['created_at']}"


def _status_answer(record: ScanRecord) -> _Answer:
    whole = record.to_json()
    structured = {key: whole[key] for key in _STATUS_SCHEMA["properties"] if key in whole}
    structured["next_step"] = next_step(record)
    subject = scan_subject(record.tool, record.target)
    text = f"Scan {record.scan_id} ({subject}): {record.status.value}. {structured['next_step']}"
    return _Answer(structured, text)
