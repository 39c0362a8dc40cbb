"""What the MCP surface reads scans through: the runtime's `Scans`, and the limits on waiting and reading.

The dispatcher never opens the store itself: every read goes through `Scans`, which binds it to the
caller. Waits are clamped here, once, so a call's `wait_sec` and `scan_status`'s obey one rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.settings import PolicySettings
from supervisor.config import ScansSettings, Settings
from supervisor.scans.service import Scans

if TYPE_CHECKING:
    from supervisor.runtime import Runtime

__all__ = ["ScanAccess"]


@dataclass(frozen=True)
class ScanAccess:
    scans: Scans
    config: Callable[[], Settings]  # the settings in force now: a reload changes the limits and the scope

    @classmethod
    def of(cls, runtime: Runtime) -> ScanAccess:
        return cls(scans=runtime.scans, config=lambda: runtime.settings)

    @property
    def settings(self) -> ScansSettings:
        return self.config().scans

    @property
    def policy(self) -> PolicySettings:
        """The scope a model may scan, as the model is told it."""
        return self.config().policy

    def wait_sec(self, requested: Any, default: float | None = None) -> float:
        """A wait a client asked for, defaulting to `inline_wait_sec` and capped by `max_wait_sec`."""
        if isinstance(requested, int | float) and not isinstance(requested, bool) and math.isfinite(requested):
            return max(0.0, min(float(requested), self.settings.max_wait_sec))
        return self.settings.inline_wait_sec if default is None else default
