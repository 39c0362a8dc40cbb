"""Where a tool's binary is and what version it says it is, asked of the binary itself.

The query is a bounded `ProcessRun` like any other: a binary that hangs or floods cannot hold it up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from actors.runner import ProcessRun, RunRequest


def probe_binary(
    binary: str, version_argv: tuple[str, ...], *, started: Callable[[ProcessRun], bool] | None = None
) -> dict[str, Any]:
    """Where `binary` is and what version it says it is; `started` may veto the query (False)."""
    path = binary if os.sep in binary else shutil.which(binary)
    info: dict[str, Any] = {"binary": binary, "found": False, "path": path, "version": None, "probed": True}
    if path is None or not os.path.isfile(path):
        return info
    info["found"] = True
    info["executable"] = os.access(path, os.X_OK)
    if not info["executable"]:
        return info
    run = ProcessRun(RunRequest(argv=(path, *version_argv), timeout_sec=5.0, kill_grace_sec=0.5))
    if started is not None and not started(run):
        return info
    result = run.run()
    text = (result.stdout or result.stderr).decode("utf-8", "replace").strip()
    info["version"] = text.splitlines()[0][:200] if text else None
    return info
