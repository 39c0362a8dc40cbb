"""Where a tool actor's runs happen: on this machine (`LAUNCH_HERE`), or on a scanner node of a pool.

A tool actor asks its `Launch` for one `Run` per call and drives it on a runner thread the same way
wherever the process is. A launch for a pool holds that incarnation's runner on a Ray node
(`actors.remote_run`); the incarnation closes it when it ends, so a runner never outlives the actor
that admitted its calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from actors.faults import Shaping
from actors.prepare import PreparedCall
from actors.runner import ProcessRun, Run, RunRequest
from actors.settings import PolicySettings, ToolSettings

LineSink = Callable[[str], None]


class Launch(Protocol):
    pool: str | None
    """The pool whose nodes run the processes; None for this machine."""

    def __call__(
        self, prepared: PreparedCall, request: RunRequest, on_line: LineSink | None, shaping: Shaping | None
    ) -> Run: ...

    def configure(self, settings: ToolSettings, policy: PolicySettings | None) -> None:
        """New settings from a reload (and the new policy, when given): later runs are checked and bounded by them."""

    def alive(self) -> bool:
        """False once the runner is known to be dead; never blocks (asked at every supervisor ping)."""

    def lose(self) -> None:
        """An injected `runner_lost` fault: the runner dies now, as when its node is lost."""

    def close(self) -> None:
        """The incarnation is over: release the runner (its runs have ended or are being ended)."""


class LaunchHere:
    """Runs each process on this machine."""

    pool: str | None = None

    def __call__(
        self, prepared: PreparedCall, request: RunRequest, on_line: LineSink | None, shaping: Shaping | None
    ) -> Run:
        return ProcessRun(request if shaping is None else shaping.apply(request), on_line=on_line)

    def configure(self, settings: ToolSettings, policy: PolicySettings | None) -> None:
        """Runs here take their bounds from the tool actor's settings at each start."""

    def alive(self) -> bool:
        return True

    def lose(self) -> None:
        """Nothing here is remote: a local run has no runner to lose."""

    def close(self) -> None:
        """Nothing to release."""


LAUNCH_HERE = LaunchHere()
