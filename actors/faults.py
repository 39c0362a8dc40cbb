"""What an injected fault does to a call, as seen from inside the tool actor.

Which calls get a fault is the supervisor's fault plan (`FaultSource`); this module holds the
effects, each the real thing: a crash raises inside the actor, a hang blocks its mailbox, a flood
is a local process writing far more than the caps allow.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from actors.runner import Run, RunRequest


class FaultKind(StrEnum):
    CRASH = "crash"
    HANG = "hang"
    FAIL = "fail"
    DELAY = "delay"
    TIMEOUT = "timeout"
    FLOOD = "flood"
    RUNNER_LOST = "runner_lost"  # a pool's runner dies as the call starts, as when its node is lost


class InjectedCrash(RuntimeError):
    """Raised on the actor's thread by a `crash` fault."""


FLOOD_SCRIPT = (
    "import sys\n"
    "n = int(sys.argv[1]); chunk = b'X' * 65535 + b'\\n'\n"
    "w = sys.stdout.buffer\n"
    "while n > 0:\n"
    "    w.write(chunk[:n]); n -= len(chunk)\n"
)


@dataclass
class Fault:
    kind: FaultKind
    delay_sec: float = 1.0
    flood_bytes: int = 200 << 20
    exit_code: int = 1
    # Set when the runtime stops or the hung incarnation is replaced.
    released: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        return f"fault {self.kind.value}"

    def hang(self, retired: threading.Event) -> None:
        """Block the actor's thread until the fault is cleared or the actor is retired, then die.

        A released hang never resumes work: its calls were answered by whoever
        noticed the hang, and its successor may already be serving.
        """
        while not (self.released.is_set() or retired.is_set()):
            retired.wait(0.2)
        raise InjectedCrash("hung actor released")

    def shaping(self) -> Shaping | None:
        """What this fault does to the process itself, if anything: the part a scanner node applies."""
        if self.kind in (FaultKind.FLOOD, FaultKind.TIMEOUT):
            return Shaping(self.kind, self.delay_sec, self.flood_bytes)
        return None

    def before_run(self, run: Run) -> None:
        """A delay holds the call back, but never past its own timeout, and a cancel cuts it short."""
        if self.kind is FaultKind.DELAY:
            run.wait_cancelled(min(self.delay_sec, run.request.timeout_sec))


@dataclass(frozen=True)
class Shaping:
    """A fault that replaces the process: plain data, so a scanner node can apply it after its own checks."""

    kind: FaultKind
    delay_sec: float
    flood_bytes: int

    def apply(self, request: RunRequest) -> RunRequest:
        if self.kind is FaultKind.FLOOD:
            flood = (sys.executable, "-c", FLOOD_SCRIPT, str(self.flood_bytes))
            return replace(request, argv=flood)
        # A process that outlives any deadline, so the real timeout path ends it.
        endless = (sys.executable, "-c", "import time\nwhile True: time.sleep(60)")
        return replace(request, argv=endless, timeout_sec=min(request.timeout_sec, self.delay_sec))


FaultSource = Callable[[str, str], Fault | None]
"""(tool, call_id) -> the fault to apply to this call, if any."""


def no_faults(tool: str, call_id: str) -> Fault | None:
    return None
