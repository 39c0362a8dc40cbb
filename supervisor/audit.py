"""The audit log: who ran what against which target, and how it ended.

One JSON object per line, appended, never rewritten, for every answered call (refused ones too).
A thread of its own writes the lines, so an actor answering a call never waits on a disk.
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
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
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
    if arguments is not None and not outcome.argv:
        record["arguments"] = arguments
    return record


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
