"""A call's envelope as an MCP tool result a model can read at a glance.

The whole `CallOutcome` goes out as `structuredContent`; `content` leads with a one-line summary
(what ran, what it found, or why it failed and what to do next), then the envelope as JSON for
older clients. `isError` mirrors `ok`: a refused or failed scan is never a protocol error.
"""

from __future__ import annotations

import json
from typing import Any

from actors.results import CallOutcome
from supervisor.scans import views
from supervisor.scans.records import ScanRecord, scan_subject, status_of
from transports.mcp import eras
from transports.mcp.resources import scan_uri

__all__ = ["call_tool_result", "scan_call_result", "summarize", "working_result"]


def call_tool_result(
    outcome: CallOutcome,
    *,
    structured_content: bool = True,
    scan_id: str | None = None,
    resource_links: bool = False,
    max_chars: int | None = None,
) -> dict[str, Any]:
    """The `CallToolResult` for `outcome`, as JSON-ready wire fields.

    Built as the wire dictionary directly rather than through the wire models: the envelope is
    already a validated `CallOutcome`, and validating it again costs more than the rest of the
    reply. The tests check the output against every version's `mcp_types` schema.

    `structured_content` is False for protocol revisions that predate
    `structuredContent`; their clients read the JSON text block instead. A completed scan's answer
    links its resource (`resource_links`, from 2025-06-18 on), and when its envelope is longer than
    `max_chars` (a big result, or the partial one of a failed or timed-out scan) it carries the
    result's summary in place of the whole result, and says so.
    """
    structured = outcome.model_dump(mode="json")
    text = summarize(outcome, scan_id)
    if scan_id is not None:
        structured["scan_id"] = scan_id
        structured["status"] = status_of(outcome).value
    as_json = json.dumps(structured, separators=(",", ":"), ensure_ascii=False)
    if scan_id is not None and max_chars is not None and len(as_json) > max_chars:
        structured, text = _summarized(outcome, structured, text, scan_id, len(as_json), max_chars)
        as_json = json.dumps(structured, separators=(",", ":"), ensure_ascii=False)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}, {"type": "text", "text": as_json}]
    if scan_id is not None and resource_links:
        content.append(_resource_link(outcome, scan_id))
    result: dict[str, Any] = {"content": content, "isError": not outcome.ok}
    if structured_content:
        result["structuredContent"] = structured
    return result


def scan_call_result(
    outcome: CallOutcome, *, version: str, scan_id: str | None, max_chars: int | None
) -> dict[str, Any]:
    """Exactly what a `tools/call` answers at `version` for a settled scan; `tasks/result` and `tasks/get` too."""
    return call_tool_result(
        outcome,
        structured_content=eras.has_feature(version, "structured_content"),
        scan_id=scan_id,
        resource_links=eras.has_feature(version, "resource_links"),
        max_chars=max_chars,
    )


def working_result(record: ScanRecord, *, structured_content: bool = True) -> dict[str, Any]:
    """The answer to a call whose scan outlived the call's wait: not an error, and what to do next."""
    subject = scan_subject(record.tool, record.target)
    done = f" ({record.progress:g}% done)" if record.progress is not None else ""
    text = (
        f"{subject} is still running{done} as scan {record.scan_id}. Call scan_status with scan_id "
        f"{record.scan_id!r} and wait_sec to wait for it, then scan_result to read what it found; "
        "scan_cancel stops it."
    )
    structured: dict[str, Any] = {
        "tool": record.tool,
        "call_id": record.call_id,
        "ok": False,
        "status": record.status.value,
        "scan_id": record.scan_id,
        "target": record.target,
        "resolved_targets": list(record.resolved_targets),
        "argv": list(record.argv),
        "progress": record.progress,
        "next_step": text,
    }
    as_json = json.dumps(structured, separators=(",", ":"), ensure_ascii=False)
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}, {"type": "text", "text": as_json}]}
    result["isError"] = False
    if structured_content:
        result["structuredContent"] = structured
    return result


def summarize(outcome: CallOutcome, scan_id: str | None = None) -> str:
    subject = scan_subject(outcome.tool, outcome.target)
    handle = f"Scan id {scan_id}, call id {outcome.call_id}." if scan_id else f"Call id {outcome.call_id}."
    if outcome.error is not None or not outcome.ok:
        error = outcome.error
        if error is None:
            return f"{subject} failed without an error description. {handle}"
        parts = [f"{subject} failed ({error.error_type.value}): {error.message.rstrip('.')}."]
        if error.retry_after_sec is not None:
            parts.append(f"Retry after {error.retry_after_sec:g}s.")
        parts.append(f"Next step: {error.recovery_suggestion}")
        parts += _retries(outcome)
        parts.append(handle)
        return " ".join(parts)
    exit_text = f", exit {outcome.returncode}" if outcome.returncode is not None else ""
    parts = [f"{subject} finished in {outcome.duration_sec:.1f}s{exit_text}: {_findings(outcome.result)}."]
    if outcome.stdout_truncated:
        parts.append("Output was truncated at the byte cap; narrow the scan for complete results.")
    parts += _retries(outcome)
    parts.append(handle)
    return " ".join(parts)


def _retries(outcome: CallOutcome) -> list[str]:
    """A sentence saying the call was tried again after transient failures, if it was."""
    if not outcome.retried:
        return []
    why = ", then ".join(attempt.error_type.value for attempt in outcome.retried)
    made = f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
    return [f"{made} made; transient failures before this answer: {why}."]


def _findings(result: dict[str, Any] | None) -> str:
    """Count what a parsed result holds, whatever the tool (hosts and ports, or found paths)."""
    if not result:
        return "no parsed output"
    facts: list[str] = []
    hosts = result.get("hosts")
    if isinstance(hosts, list):
        open_ports = sum(
            1
            for host in hosts
            if isinstance(host, dict)
            for port in host.get("ports") or []
            if isinstance(port, dict) and port.get("state", "open") == "open"
        )
        facts.append(f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}")
        facts.append(f"{open_ports} open port{'s' if open_ports != 1 else ''}")
    findings = result.get("findings")
    if isinstance(findings, list):
        facts.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")
    return ", ".join(facts) if facts else "parsed output attached"


def _summarized(
    outcome: CallOutcome, structured: dict[str, Any], text: str, scan_id: str, whole: int, max_chars: int
) -> tuple[dict[str, Any], str]:
    """The envelope with the result's summary in place of the result, and a text that says so."""
    where = (
        f"The whole result is {whole} characters, more than the {max_chars} an answer holds, so this answer "
        f"carries its summary: read {scan_uri(scan_id)} for all of it, or call scan_result with scan_id "
        f"{scan_id!r} and hosts/ports/state/service filters or offset/limit to read it in pages."
    )
    text = f"{text} {where}"
    rest = {**structured, "result": None, "next_step": where}
    # The summary gets what the envelope's other fields and the text leave of the budget (at least what a view needs).
    spare = max_chars - len(text) - len(json.dumps(rest, separators=(",", ":"), ensure_ascii=False))
    view = views.summarize(outcome, max_chars=max(spare, views.MIN_MAX_CHARS))
    return {**rest, "summary": view.structured}, text


def _resource_link(outcome: CallOutcome, scan_id: str) -> dict[str, Any]:
    subject = scan_subject(outcome.tool, outcome.target)
    return {
        "type": "resource_link",
        "uri": scan_uri(scan_id),
        "name": f"scan-{scan_id}",
        "title": f"{subject}: the whole result",
        "description": "The complete outcome of this scan as JSON; scan_result reads it in pieces.",
        "mimeType": "application/json",
    }
