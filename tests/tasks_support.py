"""What the task tests share: requests in both eras, and the answers a task must give, read from its store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mcp_types as types

from supervisor.scans.store import ScanStore
from transports.mcp.tasks import EXTENSION, RELATED_TASK
from transports.mcp.tool_results import scan_call_result

MODERN = "2026-07-28"
TASK_ID = re.compile(r"[0-9a-f]{32}")
UNKNOWN_ID = "0" * 32
NMAP = {"target": "10.0.0.5", "ports": "22,80"}
CAPABLE = {"extensions": {EXTENSION: {}}}
TASKS_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}


def modern_meta(capabilities: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A 2026-07-28 envelope; by default its client declares the tasks extension."""
    return {
        types.PROTOCOL_VERSION_META_KEY: MODERN,
        types.CLIENT_CAPABILITIES_META_KEY: CAPABLE if capabilities is None else capabilities,
        types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "1"},
        **extra,
    }


def stored_result(store: Path | str, task_id: str, version: str = "2025-11-25") -> dict[str, Any]:
    """Exactly the CallToolResult a call at `version` gives for the scan `task_id`, from the store's record of it."""
    opened = ScanStore(store)
    try:
        outcome = opened.outcome(task_id, None)
    finally:
        opened.close()
    assert outcome is not None, f"scan {task_id} has no outcome in {store}"
    return scan_call_result(outcome, version=version, scan_id=task_id, max_chars=20_000)


def related(result: dict[str, Any]) -> str:
    return result["_meta"][RELATED_TASK]["taskId"]


def check_handshake_task(task: dict[str, Any], status: str) -> None:
    """A 2025-11-25 Task: every field the schema asks for, the store's retention as its ttl."""
    types.Task.model_validate(task)
    assert TASK_ID.fullmatch(task["taskId"]) and task["status"] == status
    assert task["ttl"] == 7 * 86_400_000 and task["pollInterval"] > 0
    assert task["createdAt"].endswith("Z") and task["lastUpdatedAt"] >= task["createdAt"]


def check_modern_task(task: dict[str, Any], status: str) -> None:
    """A 2026-07-28 task: `ttlMs` and `pollIntervalMs`, never the 2025-11-25 names."""
    assert TASK_ID.fullmatch(task["taskId"]) and task["status"] == status
    assert task["ttlMs"] == 7 * 86_400_000 and task["pollIntervalMs"] > 0
    assert "ttl" not in task and "pollInterval" not in task and "task" not in task
    assert task["createdAt"].endswith("Z") and task["lastUpdatedAt"] >= task["createdAt"]


def unstamped(result: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 result without its `resultType` and server stamp, to compare with a built one."""
    meta = {k: v for k, v in result.get("_meta", {}).items() if k != types.SERVER_INFO_META_KEY}
    bare = {k: v for k, v in result.items() if k not in ("resultType", "_meta")}
    return {**bare, **({"_meta": meta} if meta else {})}
