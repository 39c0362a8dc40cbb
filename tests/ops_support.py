"""A real runtime on fake scanners, for the tests of the ops endpoints, the server and the CLI."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor.runtime import Runtime
from tests.fakes.install import TOOLS, install_fake

TOKEN = "s3cret-ops-token-7f1c"


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def fake_config(directory: Path, **extra: Any) -> dict[str, Any]:
    """A config (shaped like the TOML) whose tools are the fakes, installed in `directory`."""
    tools = {tool: {"binary": str(install_fake(directory / "bin", tool))} for tool in TOOLS}
    base = {
        "tools": tools,
        "policy": {"dns": False},
        # Pings are the supervisor's hang detector; slow them down so they never race a test.
        "supervisor": {"ping_interval_sec": 60.0, "ping_deadline_sec": 60.0},
    }
    return merge(base, extra)


def start_runtime(directory: Path, **extra: Any) -> Runtime:
    return Runtime.start(fake_config(directory, **extra))


class BlockingRuntime:
    """Stands in for a runtime whose supervisor is slow to answer, to show the loop stays free."""

    def __init__(self) -> None:
        self.escalated = threading.Event()
        self.escalation_reason: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def metrics_text(self) -> str:
        self.entered.set()
        if not self.release.wait(10.0):
            raise AssertionError("never released")
        return "labrecon_up 1\n"
