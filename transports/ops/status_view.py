"""The status snapshot and the scans as tables an operator reads at a glance, like `kubectl get`.

Pure functions from the `Status` model (and the scan records the ops endpoints serve) to plain text
in aligned columns, so it survives `less`, `watch` and a copy into a ticket; colour only on a
terminal without `NO_COLOR`, never changing the alignment. Free text goes last in a row, so a long
reason never pushes the numbers apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from supervisor.status import (
    CheckResult,
    ClusterStatus,
    ConfigStatus,
    NodeStatus,
    PoolStatus,
    ReloadAttempt,
    ScanStoreStatus,
    Status,
    ToolStatus,
)

__all__ = [
    "describe_fault",
    "format_duration",
    "render_faults",
    "render_reload",
    "render_scan",
    "render_scans",
    "render_status",
    "should_color",
]

REASON_WIDTH = 48

_CODES = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1"}

_STATE_STYLE = {"running": "green", "restarting": "yellow", "failed": "red", "stopped": "dim", "disabled": "dim"}
_BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "red"}
_HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
_SCAN_STYLE = {"working": "yellow", "completed": "green", "failed": "red", "cancelled": "dim"}

Cell = tuple[str, str | None]  # (text, style)


def should_color(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour for a terminal, never when NO_COLOR is set to anything non-empty."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def render_status(status: Status, *, color: bool = False) -> str:
    paint = _painter(color)
    rt = status.runtime
    health = status.health
    summary = f"labrecon {rt.version}  pid {rt.pid}  up {format_duration(rt.uptime_sec)}  config {rt.config_digest}"
    verdict = paint(health.status, _HEALTH_STYLE.get(health.status))
    readiness = paint("ready", "green") if health.ready else paint("NOT READY", "red")
    lines = [paint(summary, "bold"), f"health: {verdict}, {readiness}"]
    if status.sessions:
        lines.append("sessions: " + ", ".join(f"{name} {count}" for name, count in sorted(status.sessions.items())))
    if status.scans is not None:
        lines.append(_store_line(status.scans, paint))
    if status.config is not None:
        lines += _config_lines(status.config, paint)
    lines.append("")
    lines += _tool_table(list(status.tools.values()), paint) if status.tools else ["no tools enabled"]
    disabled = [tool for tool in status.tools.values() if tool.state == "disabled"]
    if disabled:
        lines.append("")
        lines += [_disabled_line(tool) for tool in disabled]
    if status.cluster is not None:
        lines.append("")
        lines += _cluster_lines(status.cluster, paint)
    lines.append("")
    lines += _table(("CHECK", "RESULT", "DETAIL"), [_check_row(check) for check in health.checks], paint)
    if status.faults:
        lines.append("")
        lines += _fault_table(status.faults, paint)
    return "\n".join(line.rstrip() for line in lines)


def render_reload(attempt: ReloadAttempt) -> str:
    """What a reload changed, as `labrecon reload` prints it: the keys, the tools, what waits for a restart."""
    if not attempt.changed and not attempt.needs_restart:
        return f"reloaded by {_safe(attempt.by)}: nothing changed (config {attempt.new_digest})"
    if attempt.new_digest == attempt.old_digest:  # the fingerprint masks secrets: only they changed
        lines = [f"reloaded by {_safe(attempt.by)}: config {attempt.new_digest} (same fingerprint: secrets changed)"]
    else:
        lines = [f"reloaded by {_safe(attempt.by)}: config {attempt.old_digest} -> {attempt.new_digest}"]
    applied = [key for key in attempt.changed if key not in attempt.needs_restart]
    if applied:
        lines.append("applied:       " + ", ".join(applied))
    if attempt.tools:
        lines.append("tools:         " + ", ".join(f"{tool} {kind}" for tool, kind in sorted(attempt.tools.items())))
    if attempt.needs_restart:
        lines.append("needs restart: " + ", ".join(attempt.needs_restart) + " (running values kept until then)")
    return "\n".join(lines)


def render_faults(rules: Sequence[Mapping[str, Any]], *, color: bool = False) -> str:
    if not rules:
        return "no fault rules"
    return "\n".join(line.rstrip() for line in _fault_table(rules, _painter(color)))


def render_scans(records: Sequence[Mapping[str, Any]], *, color: bool = False) -> str:
    """Scan records (as `/scans` serves them) one a row, newest first as given."""
    if not records:
        return "no scans"
    headers = ("SCAN", "TOOL", "STATUS", "TARGET", "CREATED (UTC)", "TIME/PROGRESS", "OWNER")
    return "\n".join(line.rstrip() for line in _table(headers, [_scan_row(r) for r in records], _painter(color)))


def render_scan(scan: Mapping[str, Any], *, color: bool = False) -> str:
    """One scan (as `/scans/{id}` serves it): the record as labelled lines, then how it ended."""
    paint = _painter(color)
    status = str(scan.get("status", "?"))
    rows: list[tuple[str, str]] = [
        ("scan", _safe(str(scan.get("scan_id", "?")))),
        ("tool", _safe(str(scan.get("tool", "?")))),
        ("status", paint(_safe(status), _SCAN_STYLE.get(status))),
        ("owner", _safe(str(scan.get("owner", "?")))),
        ("target", _safe(_target(scan))),
        ("arguments", _safe(" ".join(f"{k}={v}" for k, v in (scan.get("arguments") or {}).items())) or "-"),
        ("argv", _safe(" ".join(scan.get("argv") or [])) or "-"),
        ("created", _when(scan.get("created_at"))),
        ("updated", _when(scan.get("updated_at"))),
        ("time", _elapsed_or_progress(scan)),
    ]
    if scan.get("error_type"):
        error = _safe(f"{scan['error_type']}: {scan.get('error') or ''}".rstrip(": "))
        rows.append(("error", paint(error, "red")))
    outcome = scan.get("outcome")
    if isinstance(outcome, Mapping):
        rows.append(("returncode", str(outcome.get("returncode", "-"))))
        capped = [name for name in ("stdout", "stderr") if outcome.get(f"{name}_truncated")]
        if outcome.get("timed_out"):
            rows.append(("timed out", "yes"))
        if capped:
            rows.append(("truncated", ", ".join(capped) + " (output hit the byte cap)"))
        result = outcome.get("result")
        if isinstance(result, Mapping):
            hosts = result.get("hosts")
            found = f"{len(hosts)} host{'' if len(hosts) == 1 else 's'}" if isinstance(hosts, list) else "parsed"
            rows.append(("result", f"{found} (the whole result: --json)"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for label, value in rows)


def describe_fault(rule: Mapping[str, Any]) -> str:
    """One line for one rule: `fault 3: nmap crash, next 2` (`nmap@dmz` for a rule on one pool)."""
    detail = _fault_detail(rule)
    text = f"fault {rule.get('id', '?')}: {_fault_tool(rule)} {rule.get('kind', '?')}, {_trigger(rule)}"
    return text + (f", {detail}" if detail != "-" else "")


def format_duration(seconds: float | None) -> str:
    """Short and exact enough for a glance: 340ms, 4.2s, 3m12s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


# --- rows -----------------------------------------------------------------------------------


_TOOL_COLUMNS = ("STATE", "BREAKER", "IN-FLIGHT", "QUEUED", "P50", "P95", "OK", "FAILED", "RESTARTS", "LAST RESTART")


def _tool_table(tools: list[ToolStatus], paint: Any) -> list[str]:
    """One row per slot; with scanner pools, the pool in a column of its own and the rows pool by pool."""
    if all(tool.pool is None for tool in tools):
        return _table(("TOOL", *_TOOL_COLUMNS), [_tool_row(tool) for tool in tools], paint)
    by_pool = sorted(tools, key=lambda tool: tool.pool or "")  # stable: the tools' own order within a pool
    rows = [[(tool.tool, "bold"), (tool.pool or "-", None), *_tool_row(tool)[1:]] for tool in by_pool]
    return _table(("TOOL", "POOL", *_TOOL_COLUMNS), rows, paint)


def _cluster_lines(cluster: ClusterStatus, paint: Any) -> list[str]:
    """The scanner pools (live or not, their nodes), then each live node with its runners' tools and load."""
    lines = [_safe(f"cluster: ray at {cluster.address}, nodes as seen {_stamp(cluster.checked_at)}")]
    pools = [
        [
            (pool.name, "bold"),
            ("yes", "green") if pool.live else ("NO", "red"),
            (str(sum(node.alive for node in pool.nodes)), None),
            (pool.resource, None),
            (", ".join(pool.networks), None),
        ]
        for pool in cluster.pools
    ]
    lines += _table(("POOL", "LIVE", "NODES", "RESOURCE", "NETWORKS"), pools, paint)
    nodes = [_node_row(pool, node) for pool in cluster.pools for node in pool.nodes if node.alive]
    lines.append("")
    if nodes:
        lines += _table(("POOL", "NODE", "ADDRESS", "RUNNING", "LOAD", "TOOLS"), nodes, paint)
    else:
        lines.append(paint("no live node in any pool", "red"))
    return lines


def _node_row(pool: PoolStatus, node: NodeStatus) -> list[Cell]:
    load = " ".join(f"{value:.2f}" for value in node.load) if node.load else "-"
    tools = ", ".join(f"{tool} {' '.join((version or '?').split())}" for tool, version in sorted(node.tools.items()))
    return [
        (pool.name, None),
        (node.node_id, None),
        (node.address, None),
        (str(node.running), None),
        (load, None),
        (tools or "-", None),  # free text last
    ]



def _tool_row(tool: ToolStatus) -> list[Cell]:
    breaker = tool.breaker
    breaker_text: str = breaker.state
    if breaker.state == "open" and breaker.retry_after_sec is not None:
        breaker_text += f" {format_duration(breaker.retry_after_sec)}"
    elif breaker.consecutive_failures:
        breaker_text += f" ({breaker.consecutive_failures} fail)"
    queued = str(tool.queued) + (f" +{tool.stashed} stashed" if tool.stashed else "")
    running = str(tool.in_flight) + (f" ({tool.retiring} retiring)" if tool.retiring else "")
    retried = sum(tool.retries.values())
    if tool.state == "failed" and tool.failed_reason:
        reason = f"failed: {tool.failed_reason}"
    elif tool.state == "disabled":
        reason = f"disabled: {tool.disabled_reason or '-'}"
    else:
        reason = tool.last_restart_reason or "-"
    ok = tool.calls.get("ok", 0)
    failed = sum(count for outcome, count in tool.calls.items() if outcome != "ok")
    return [
        (tool.name, "bold"),
        (tool.state, _STATE_STYLE.get(tool.state)),
        (breaker_text, _BREAKER_STYLE.get(breaker.state)),
        (running, "yellow" if tool.retiring else None),
        (queued, "yellow" if tool.stashed else None),
        (format_duration(tool.p50_sec), None),
        (format_duration(tool.p95_sec), None),
        (str(ok), None),
        (str(failed), "red" if failed else None),
        (str(tool.restarts) + (f" ({retried} calls retried)" if retried else ""), "yellow" if tool.restarts else None),
        (_clip(reason), "red" if tool.state == "failed" else None),  # free text last, as kubectl does
    ]


def _disabled_line(tool: ToolStatus) -> str:
    since = f" since {_stamp(tool.disabled_since)}" if tool.disabled_since is not None else ""
    return _safe(f"{tool.name} disabled{since}: {' '.join((tool.disabled_reason or '-').split())}")


def _config_lines(config: ConfigStatus, paint: Any) -> list[str]:
    """The config in force, the last reload refused (while it is the latest word), keys waiting for a restart."""
    source = f" from {config.source}" if config.source else ""
    reloads = f"{config.reloads} reload{'' if config.reloads == 1 else 's'}"
    lines = [_safe(f"config: {config.digest}{source}, in force since {_stamp(config.loaded_at)}, {reloads}")]
    failure = config.last_failure
    if failure is not None:
        why = " ".join((failure.error or "refused").split())
        text = _safe(f"last failed reload: {_stamp(failure.at)} by {failure.by}: {why}")
        lines.append(paint(text, "red" if failure.at >= config.loaded_at else None))
    if config.needs_restart:
        lines.append(paint("needs restart: " + ", ".join(config.needs_restart), "yellow"))
    return lines


def _stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _store_line(store: ScanStoreStatus, paint: Any) -> str:
    counts = ", ".join(
        paint(f"{status} {count}", _SCAN_STYLE.get(status) if count else None) for status, count in store.counts.items()
    )
    return f"scans: {counts}; store {store.path} ({_size(store.size_bytes)}), {store.expired_total} expired"


def _scan_row(scan: Mapping[str, Any]) -> list[Cell]:
    status = str(scan.get("status", "?"))
    return [
        (str(scan.get("scan_id", "?")), None),
        (str(scan.get("tool", "?")), "bold"),
        (status, _SCAN_STYLE.get(status)),
        (_clip(_target(scan), 40), None),
        (_when(scan.get("created_at")), None),
        (_elapsed_or_progress(scan), None),
        (str(scan.get("owner", "?")), None),
    ]


def _target(scan: Mapping[str, Any]) -> str:
    target = scan.get("target") or (scan.get("arguments") or {}).get("target")
    if not target:
        return "-"
    resolved = [str(address) for address in scan.get("resolved_targets") or [] if address != target]
    return str(target) + (f" ({', '.join(resolved)})" if resolved else "")


def _when(stamp: Any) -> str:
    """`2025-06-01T10:00:03.120Z` as `2025-06-01 10:00:03`: the second is as exact as a glance needs."""
    return str(stamp)[:19].replace("T", " ") if stamp else "-"


def _elapsed_or_progress(scan: Mapping[str, Any]) -> str:
    """A finished scan's duration; a running one's progress (or that it runs)."""
    if scan.get("status") == "working":
        progress = scan.get("progress")
        return f"{progress:.0f}%" if isinstance(progress, int | float) else "running"
    try:
        created = datetime.fromisoformat(str(scan["created_at"]))
        updated = datetime.fromisoformat(str(scan["updated_at"]))
    except (KeyError, ValueError):
        return "-"
    return format_duration(max(0.0, (updated - created).total_seconds()))


def _check_row(check: CheckResult) -> list[Cell]:
    if check.ok:
        result: Cell = ("ok", "green")
    elif check.critical:
        result = ("FAIL", "red")
    else:
        result = ("warn", "yellow")
    return [(check.name, None), result, (_clip(check.detail or "-", 72), None)]


def _fault_table(rules: Sequence[Mapping[str, Any]], paint: Any) -> list[str]:
    rows = []
    for rule in rules:
        active = bool(rule.get("active", True))
        rows.append(
            [
                (str(rule.get("id", "?")), None),
                (_fault_tool(rule), None),
                (str(rule.get("kind", "?")), "yellow" if active else "dim"),
                (_trigger(rule), None),
                (_fault_detail(rule), None),
                (f"{rule.get('fired', 0)}/{rule.get('seen', 0)}", None),
                ("yes" if active else "spent", "yellow" if active else "dim"),
            ]
        )
    return _table(("FAULT", "TOOL", "KIND", "TRIGGER", "DETAIL", "FIRED/SEEN", "ACTIVE"), rows, paint)


def _fault_tool(rule: Mapping[str, Any]) -> str:
    """The tool a rule hits, on its pool when it names one: "nmap", "nmap@dmz"."""
    tool = str(rule.get("tool", "?"))
    return f"{tool}@{rule['pool']}" if rule.get("pool") else tool


def _trigger(rule: Mapping[str, Any]) -> str:
    if rule.get("count") is not None:
        return f"next {rule['count']}"
    if rule.get("every") is not None:
        return f"every {rule['every']}"
    if rule.get("probability") is not None:
        seed = f" seed {rule['seed']}" if rule.get("seed") is not None else ""
        return f"p={rule['probability']:g}{seed}"
    return "every call"


def _fault_detail(rule: Mapping[str, Any]) -> str:
    kind = rule.get("kind")
    if kind == "delay" and rule.get("delay_sec") is not None:
        return f"{format_duration(float(rule['delay_sec']))} delay"
    if kind == "flood" and rule.get("flood_bytes") is not None:
        return _size(int(rule["flood_bytes"]))
    return "-"


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.0f} {unit}"
    return f"{count} B"


# --- layout ---------------------------------------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """Text from a client or a tool, with control characters shown as escapes: a terminal runs none of them."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def _clip(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(text.split())  # reasons may carry newlines from stderr
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], paint: Any) -> list[str]:
    """Columns padded to the widest plain text, then painted, so colour never shifts alignment."""
    widths = [len(h) for h in headers]
    rows = [[(_safe(text), style) for text, style in row] for row in rows]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    gap = "  "
    out = [gap.join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        cells = []
        for (text, style), width in zip(row, widths, strict=True):
            padding = " " * (width - len(text))
            cells.append(paint(text, style) + padding)
        out.append(gap.join(cells))
    return out


def _painter(color: bool) -> Any:
    def paint(text: str, style: str | None) -> str:
        if not color or style is None or not text:
            return text
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m"

    return paint
