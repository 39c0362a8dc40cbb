"""The audit log: who ran what against which target, and how it ended.

One JSON object per line, appended, never rewritten, each naming its `event`: every answered call
(refused ones too), every scan started, every cancel asked through the scans, every expiry, every
reload (applied or refused) and every tool an operator disabled or enabled. A thread
of its own writes the lines, so neither an actor answering a call nor a caller ever waits on a disk.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actors.api import Caller
from actors.results import CallOutcome
from supervisor.scans.records import ScanRecord
from supervisor.status import ReloadAttempt

logger = logging.getLogger(__name__)

_STOP = object()


def audit_record(
    outcome: CallOutcome, *, caller: Caller | None, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The line for one answered call; the arguments only when the call was refused before it ran.

    `owner` is the identity the server established; `via` is what the transport saw (peer, and the
    client's own name for itself, which proves nothing).
    """
    record: dict[str, Any] = {
        "ts": _now(),
        "event": "call_answered",
        "call_id": outcome.call_id,
        "owner": caller.owner if caller is not None else None,
        "via": caller.detail if caller is not None else None,
        "tool": outcome.tool,
        "target": outcome.target,
        "resolved": outcome.resolved_targets,
        "argv": outcome.argv,
        "outcome": "ok" if outcome.ok else (outcome.error.error_type.value if outcome.error else "error"),
        "returncode": outcome.returncode,
        "duration_sec": outcome.duration_sec,
    }
    if outcome.error is not None:
        record["error"] = outcome.error.message
    if outcome.attempts > 1 or outcome.retried:
        record["attempts"] = outcome.attempts
        record["retried"] = [attempt.model_dump(mode="json") for attempt in outcome.retried]
    if arguments is not None and not outcome.argv:
        record["arguments"] = arguments
    return record


def scan_started_record(scan: ScanRecord) -> dict[str, Any]:
    """The line for a scan whose call was admitted: its process is about to run."""
    return {
        "ts": _now(),
        "event": "scan_started",
        "scan_id": scan.scan_id,
        "call_id": scan.call_id,
        "owner": scan.owner,
        "tool": scan.tool,
        "target": scan.target,
        "resolved": list(scan.resolved_targets),
    }


def cancel_requested_record(scan: ScanRecord, by: Caller) -> dict[str, Any]:
    """The line for a cancel asked of a running scan; `by` may be an admin, not the scan's owner."""
    return {
        "ts": _now(),
        "event": "scan_cancel_requested",
        "scan_id": scan.scan_id,
        "owner": scan.owner,
        "by": by.owner,
        "via": by.detail,
        "tool": scan.tool,
        "target": scan.target,
    }


def scans_expired_record(removed: list[tuple[str, str]]) -> dict[str, Any]:
    """The line for one sweep of the store: the (scan id, owner) of each scan it removed."""
    return {
        "ts": _now(),
        "event": "scans_expired",
        "scans": [{"scan_id": scan_id, "owner": owner} for scan_id, owner in removed],
    }


def reload_record(attempt: ReloadAttempt) -> dict[str, Any]:
    """The line for a reload, applied or refused: who, the config fingerprints, what changed (keys, never values)."""
    return {"ts": _now(), "event": "config_reloaded" if attempt.ok else "config_reload_refused", **attempt.model_dump()}


def tool_switched_record(tool: str, *, enabled: bool, by: str, reason: str | None) -> dict[str, Any]:
    """The line for an operator taking a tool out of service or bringing it back."""
    event = "tool_enabled" if enabled else "tool_disabled"
    return {"ts": _now(), "event": event, "tool": tool, "by": by, "reason": reason}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end, whoever else appends to the file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_all, name="labrecon-audit", daemon=True)
        self._thread.start()

    def record(self, outcome: CallOutcome, *, caller: Caller | None, arguments: dict[str, Any] | None = None) -> None:
        self._queue.put(audit_record(outcome, caller=caller, arguments=arguments))

    def scan_started(self, scan: ScanRecord) -> None:
        self._queue.put(scan_started_record(scan))

    def scan_cancel_requested(self, scan: ScanRecord, by: Caller) -> None:
        self._queue.put(cancel_requested_record(scan, by))

    def scans_expired(self, removed: list[tuple[str, str]]) -> None:
        self._queue.put(scans_expired_record(removed))

    def reloaded(self, attempt: ReloadAttempt) -> None:
        self._queue.put(reload_record(attempt))

    def tool_switched(self, tool: str, *, enabled: bool, by: str, reason: str | None = None) -> None:
        self._queue.put(tool_switched_record(tool, enabled=enabled, by=by, reason=reason))

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._file.write(json.dumps(item, default=str) + "\n")
            except OSError:
                logger.exception("the audit log could not be written", extra={"path": str(self.path)})

    def close(self) -> None:
        """Write everything recorded so far, then close the file."""
        self._queue.put(_STOP)
        self._thread.join(10.0)
        self._file.close()
