"""Circuit breaker: stop feeding a tool that keeps failing, and probe it back.

A pure state machine with an injected clock and random source, owned by one
ToolActor and only ever touched from that actor's thread. Every method that
can change the state returns the transition, so the actor can report it
without the breaker knowing who listens.

CLOSED --N consecutive counted failures--> OPEN --open period elapsed--> HALF_OPEN
HALF_OPEN --trial succeeds--> CLOSED (open period back to its base)
HALF_OPEN --trial fails--> OPEN (open period x multiplier, capped, jittered)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from actors.settings import BreakerSettings


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Transition:
    old: BreakerState
    new: BreakerState
    reason: str


@dataclass(frozen=True)
class Admission:
    allowed: bool
    retry_after_sec: float | None = None
    trial: bool = False
    transition: Transition | None = None


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.open_period_sec = settings.open_sec
        self.reopen_at: float | None = None
        self._trial_in_flight = False
        self._trial_id: str | None = None  # which call is the trial, when the caller names its calls

    def retry_after(self) -> float | None:
        if self.state is BreakerState.OPEN and self.reopen_at is not None:
            return max(0.0, self.reopen_at - self._clock())
        return None

    def allow(self, call_id: str | None = None) -> Admission:
        """May a new call be admitted now? Moves OPEN to HALF_OPEN when the period has passed.

        Name the call (`call_id`) and pass the same id when recording its
        result: while half-open, results of calls other than the trial are
        then ignored, since only the trial says whether the tool recovered.
        """
        if self.state is BreakerState.CLOSED:
            return Admission(True)
        transition = None
        if self.state is BreakerState.OPEN:
            remaining = self.retry_after() or 0.0
            if remaining > 0:
                return Admission(False, retry_after_sec=remaining)
            transition = self._move(BreakerState.HALF_OPEN, "open period elapsed")
        if self._trial_in_flight:
            # One probe at a time; the others come back once it has answered.
            return Admission(False, retry_after_sec=min(1.0, self.open_period_sec), transition=transition)
        self._trial_in_flight = True
        self._trial_id = call_id
        return Admission(True, trial=True, transition=transition)

    def record_success(self, call_id: str | None = None) -> Transition | None:
        if self._not_the_trial(call_id):
            return None
        self.consecutive_failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self._end_trial()
            self.open_period_sec = self._settings.open_sec
            return self._move(BreakerState.CLOSED, "trial call succeeded")
        return None

    def record_failure(self, call_id: str | None = None) -> Transition | None:
        if self._not_the_trial(call_id):
            return None
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._end_trial()
            self.open_period_sec = min(
                self.open_period_sec * self._settings.backoff_multiplier, self._settings.max_open_sec
            )
            return self._open("trial call failed")
        if self.state is BreakerState.CLOSED and self.consecutive_failures >= self._settings.failure_threshold:
            return self._open(f"{self.consecutive_failures} consecutive failures")
        return None

    def record_neutral(self, call_id: str | None = None) -> None:
        """A call ended without saying anything about the tool (cancelled, refused)."""
        if self._not_the_trial(call_id):
            return
        if self.state is BreakerState.HALF_OPEN:
            self._end_trial()

    def force(self, state: BreakerState, reason: str = "operator") -> Transition | None:
        """Operator override: open now, or close and forget the failures."""
        if state is BreakerState.OPEN:
            return self._open(reason)
        if state is BreakerState.CLOSED:
            self.consecutive_failures = 0
            self.open_period_sec = self._settings.open_sec
            self._end_trial()
            self.reopen_at = None
            return self._move(BreakerState.CLOSED, reason)
        raise ValueError(f"cannot force breaker to {state}")

    def fresh(self, settings: BreakerSettings) -> CircuitBreaker:
        """A closed breaker on the same clock, for a tool that starts over (a new binary, back in service)."""
        return CircuitBreaker(settings, clock=self._clock, rng=self._rng)

    def configure(self, settings: BreakerSettings) -> None:
        """New thresholds and periods from a reload; the state, failures and any open period run on.

        A closed breaker starts its next open period from the new base.
        """
        self._settings = settings
        if self.state is BreakerState.CLOSED:
            self.open_period_sec = settings.open_sec
        else:
            self.open_period_sec = min(self.open_period_sec, settings.max_open_sec)

    def _not_the_trial(self, call_id: str | None) -> bool:
        """While half-open, a named call's result counts only if it is the trial's; the trial's ends the trial."""
        if call_id is not None and call_id == self._trial_id:
            self._trial_id = None
            return False
        return call_id is not None and self.state is BreakerState.HALF_OPEN

    def _end_trial(self) -> None:
        self._trial_in_flight = False
        self._trial_id = None

    def _open(self, reason: str) -> Transition | None:
        self._end_trial()  # whatever the trial still says, the next open period ends in a fresh one
        jitter = self._settings.jitter
        period = self.open_period_sec * (1 + self._rng.uniform(-jitter, jitter)) if jitter else self.open_period_sec
        self.reopen_at = self._clock() + period
        return self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> Transition | None:
        old, self.state = self.state, new
        if new is not BreakerState.OPEN:
            self.reopen_at = None
        return Transition(old, new, reason) if old is not new else None
