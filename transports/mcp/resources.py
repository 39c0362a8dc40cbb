"""Scans as MCP resources: `labrecon://scans/{id}` (the whole outcome), `.../raw` (the tool's own output),
and `labrecon://scope`.

Every read goes through `Scans`, bound to the caller. A scan that is unknown, expired, someone else's,
or has nothing to read yet gets one answer: the missing-resource error of the request's protocol
version (-32002 up to 2025-11-25, -32602 from 2026-07-28), carrying only the URI that was asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

import mcp_types as types

from actors.api import Caller
from supervisor.scans.records import ScanNotFound, ScanRecord, iso, scan_subject, status_of
from supervisor.scans.store import BadCursor
from supervisor.scope import scope_document
from transports.mcp.eras import MODERN_VERSIONS
from transports.mcp.jsonrpc import INVALID_PARAMS, RpcError
from transports.mcp.scan_access import ScanAccess
from transports.mcp.session import RequestContext, Session, clip

__all__ = [
    "RESOURCE_METHODS",
    "RESOURCE_NOT_FOUND",
    "SCOPE_URI",
    "Resources",
    "raw_uri",
    "scan_uri",
]

RESOURCE_METHODS: Final[frozenset[str]] = frozenset({"resources/list", "resources/read", "resources/templates/list"})

RESOURCE_NOT_FOUND: Final[int] = -32002
"""'Resource not found' up to 2025-11-25; from 2026-07-28 it is INVALID_PARAMS (-32602)."""

SCOPE_URI: Final[str] = "labrecon://scope"
_SCANS: Final[str] = "labrecon://scans/"
_RAW: Final[str] = "/raw"
PAGE_SIZE: Final[int] = 50

Handler = Callable[[Session, RequestContext], dict[str, Any]]


def scan_uri(scan_id: str) -> str:
    return f"{_SCANS}{scan_id}"


def raw_uri(scan_id: str) -> str:
    return f"{_SCANS}{scan_id}{_RAW}"


_TEMPLATES: Final[list[types.ResourceTemplate]] = [
    types.ResourceTemplate(
        uri_template=scan_uri("{scan_id}"),
        name="scan",
        title="A scan's whole result",
        description=(
            "The complete outcome of a finished scan as JSON: every host, port, service and script output "
            "(scan_result gives the same in pieces sized for a model)."
        ),
        mime_type="application/json",
    ),
    types.ResourceTemplate(
        uri_template=raw_uri("{scan_id}"),
        name="scan-raw",
        title="A scan's raw tool output",
        description="The tool's own output of a finished scan as captured (nmap XML, masscan JSON, gobuster lines).",
    ),
]


class Resources:
    """`resources/list`, `resources/templates/list` and `resources/read` over one runtime's scans."""

    def __init__(self, access: ScanAccess) -> None:
        self._access = access

    def handlers(self) -> dict[str, Handler]:
        """The methods answered at once; `read` is awaited (it may load a whole outcome)."""
        return {"resources/list": self._list, "resources/templates/list": self._templates}

    def _list(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        cursor = ctx.params.get("cursor")
        try:
            records, next_cursor = self._access.scans.page(ctx.caller_in(session), cursor=cursor, limit=PAGE_SIZE)
        except BadCursor as exc:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None
        listed = [_scope_resource()] if cursor is None else []
        listed += [_scan_resource(record) for record in records]
        return types.ListResourcesResult(resources=listed, next_cursor=next_cursor).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )

    def _templates(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        if ctx.params.get("cursor") is not None:
            raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor; resources/templates/list has one page")
        return types.ListResourceTemplatesResult(resource_templates=_TEMPLATES).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )

    async def read(self, session: Session, ctx: RequestContext) -> dict[str, Any]:
        """`resources/read`; a scan's outcome is loaded and encoded off the loop that serves every client."""
        uri: str = ctx.params["uri"]
        contents = await asyncio.to_thread(self._contents, ctx.caller_in(session), uri)
        if contents is None:
            raise _not_found(uri, ctx.version)
        return types.ReadResourceResult(contents=[contents]).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _contents(self, caller: Caller, uri: str) -> types.TextResourceContents | None:
        """What `uri` holds for `caller`; None for anything that is not there (to them, now)."""
        if uri == SCOPE_URI:
            text = json.dumps(scope_document(self._access.policy), indent=2)
            return types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
        if not uri.startswith(_SCANS):
            return None
        scan_id, raw = uri[len(_SCANS):], False
        if scan_id.endswith(_RAW):
            scan_id, raw = scan_id[: -len(_RAW)], True
        if not scan_id or "/" in scan_id:
            return None
        try:
            if raw:
                output = self._access.scans.raw(caller, scan_id)
                if output is None:
                    return None
                return types.TextResourceContents(uri=uri, mime_type=_raw_mime_type(output), text=output)
            outcome = self._access.scans.outcome(caller, scan_id)
        except ScanNotFound:
            return None
        if outcome is None:  # still running: where it stands, and when the rest is here
            record = self._access.scans.get(caller, scan_id)
            document: dict[str, Any] = {
                "scan_id": scan_id, "status": record.status.value, "progress": record.progress,
                "note": "the scan is still running; its whole outcome is here once it has finished",
            }
            return types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(document))
        document = {"scan_id": scan_id, "status": status_of(outcome).value, **outcome.model_dump(mode="json")}
        return types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(document))


def _not_found(uri: str, version: str) -> RpcError:
    code = INVALID_PARAMS if version in MODERN_VERSIONS else RESOURCE_NOT_FOUND
    return RpcError(code, "Resource not found", {"uri": clip(uri)})


def _scope_resource() -> types.Resource:
    return types.Resource(
        uri=SCOPE_URI,
        name="scope",
        title="What may be scanned",
        description="The allowed networks, domains and host cap every scan is held to.",
        mime_type="application/json",
    )


def _scan_resource(record: ScanRecord) -> types.Resource:
    subject = scan_subject(record.tool, record.target)
    readable = "the whole outcome" if record.status.terminal else "where it stands; the whole outcome once finished"
    return types.Resource(
        uri=scan_uri(record.scan_id),
        name=f"scan-{record.scan_id}",
        title=f"{subject} ({record.status.value})",
        description=f"Scan {record.scan_id}, started {iso(record.created_at)}: {readable}.",
        mime_type="application/json",
    )


def _raw_mime_type(output: str) -> str:
    head = output.lstrip()[:1]
    if head == "<":
        return "application/xml"
    if head in ("{", "["):
        return "application/json"
    return "text/plain"
