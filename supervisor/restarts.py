"""OTP restart policy as pure arithmetic: may this child restart, and after how long?

Intensity is Erlang's: at most `max_restarts` within any `window_sec`, one more and the supervisor
gives up (or escalates). Backoff spaces restarts out and forgets itself after a quiet period. The
clock and random source are injected; nothing here sleeps.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class RestartType(StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal death
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_sec: float = 0.0
    intensity_exceeded: bool = False
    reason: str = ""


class RestartPolicy:
    def __init__(
        self,
        *,
        restart_type: RestartType,
        max_restarts: int,
        window_sec: float,
        backoff_initial_sec: float,
        backoff_max_sec: float,
        backoff_reset_sec: float,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        self.restart_type = restart_type
        self.max_restarts = max_restarts
        self.window_sec = window_sec
        self.backoff_initial_sec = backoff_initial_sec
        self.backoff_max_sec = backoff_max_sec
        self.backoff_reset_sec = backoff_reset_sec
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._recent: deque[float] = deque()
        self._streak = 0
        self._last_death: float | None = None

    def on_death(self, now: float, *, abnormal: bool = True) -> RestartDecision:
        if self.restart_type is RestartType.TEMPORARY:
            return RestartDecision(False, reason="temporary children are not restarted")
        if self.restart_type is RestartType.TRANSIENT and not abnormal:
            return RestartDecision(False, reason="transient child ended normally")
        while self._recent and now - self._recent[0] > self.window_sec:
            self._recent.popleft()
        if len(self._recent) >= self.max_restarts:
            return RestartDecision(
                False,
                intensity_exceeded=True,
                reason=f"more than {self.max_restarts} restarts in {self.window_sec:g}s",
            )
        if self._last_death is not None and now - self._last_death > self.backoff_reset_sec:
            self._streak = 0
        self._last_death = now
        self._recent.append(now)
        delay = self._delay(self._streak)
        self._streak += 1
        return RestartDecision(True, delay_sec=delay)

    def reset(self) -> None:
        """An operator brought the child back: forget its history."""
        self._recent.clear()
        self._streak = 0
        self._last_death = None

    def _delay(self, streak: int) -> float:
        if self.backoff_initial_sec <= 0:
            return 0.0
        base = min(self.backoff_initial_sec * (2**streak), self.backoff_max_sec)
        if self.jitter:
            base *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return max(0.0, base)
