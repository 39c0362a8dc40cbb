"""The circuit breaker as a pure state machine, driven by a hand-moved clock."""

import random

import pytest

from actors.breaker import BreakerState, CircuitBreaker
from actors.settings import BreakerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**overrides):
    clock = Clock()
    settings = BreakerSettings(**{"jitter": 0.0, **overrides})
    return CircuitBreaker(settings, clock=clock, rng=random.Random(7)), clock


def fail(breaker, n):
    for _ in range(n):
        assert breaker.allow().allowed
        breaker.record_failure()


def test_opens_after_threshold_consecutive_failures():
    breaker, _ = make(failure_threshold=5)
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    admission = breaker.allow()
    assert not admission.allowed
    assert admission.retry_after_sec == pytest.approx(30.0)


def test_success_resets_the_consecutive_count():
    breaker, _ = make(failure_threshold=3)
    fail(breaker, 2)
    breaker.allow()
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_half_open_admits_exactly_one_trial_and_success_closes():
    breaker, clock = make(failure_threshold=1, open_sec=10)
    fail(breaker, 1)
    clock.now += 10
    trial = breaker.allow()
    assert trial.allowed and trial.trial
    assert trial.transition.new is BreakerState.HALF_OPEN
    second = breaker.allow()
    assert not second.allowed and second.retry_after_sec > 0
    transition = breaker.record_success()
    assert transition.new is BreakerState.CLOSED
    assert breaker.allow().allowed


def test_failed_trial_reopens_with_multiplied_period_capped():
    breaker, clock = make(failure_threshold=1, open_sec=10, backoff_multiplier=2, max_open_sec=25)
    fail(breaker, 1)
    periods = []
    for _ in range(3):
        clock.now = breaker.reopen_at
        assert breaker.allow().trial
        breaker.record_failure()
        periods.append(breaker.reopen_at - clock.now)
    assert periods == [20, 25, 25]


def test_cancelled_trial_frees_the_probe_slot():
    breaker, clock = make(failure_threshold=1, open_sec=1)
    fail(breaker, 1)
    clock.now += 1
    assert breaker.allow().trial
    breaker.record_neutral()
    assert breaker.allow().trial


def test_half_open_counts_only_the_named_trial():
    """Calls admitted before the circuit opened may finish while it is half-open: only the trial decides."""
    breaker, clock = make(failure_threshold=1, open_sec=1)
    fail(breaker, 1)
    clock.now += 1
    assert breaker.allow("trial").trial
    assert breaker.record_failure("older") is None
    breaker.record_neutral("older")
    assert breaker.state is BreakerState.HALF_OPEN and breaker.consecutive_failures == 1
    assert not breaker.allow("another").allowed  # the trial is still out
    assert breaker.record_success("trial").new is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_a_cancelled_named_trial_frees_the_probe_slot():
    breaker, clock = make(failure_threshold=1, open_sec=1)
    fail(breaker, 1)
    clock.now += 1
    assert breaker.allow("first").trial
    breaker.record_neutral("first")
    assert breaker.allow("second").trial


@pytest.mark.parametrize("trial_result", ["success", "failure", "neutral", "never"])
def test_forcing_open_during_a_trial_ends_the_trial(trial_result):
    """An operator opens a half-open breaker while its trial runs (or waits in the queue and is refused)."""
    breaker, clock = make(failure_threshold=1, open_sec=1)
    fail(breaker, 1)
    clock.now += 1
    assert breaker.allow("trial").trial
    assert breaker.force(BreakerState.OPEN).new is BreakerState.OPEN
    if trial_result != "never":
        getattr(breaker, f"record_{trial_result}")("trial")
    clock.now += 10
    assert breaker.allow("next").trial, "the next open period must end in a fresh trial, not a wedged half-open"


def test_jitter_stays_within_bounds():
    settings = BreakerSettings(failure_threshold=1, open_sec=100, jitter=0.2)
    clock = Clock()
    for seed in range(50):
        breaker = CircuitBreaker(settings, clock=clock, rng=random.Random(seed))
        fail(breaker, 1)
        assert 80 <= (breaker.retry_after() or 0.0) <= 120


def test_operator_can_force_open_and_closed():
    breaker, _ = make()
    assert breaker.force(BreakerState.OPEN).new is BreakerState.OPEN
    assert not breaker.allow().allowed
    assert breaker.force(BreakerState.CLOSED).new is BreakerState.CLOSED
    assert breaker.allow().allowed and breaker.consecutive_failures == 0
