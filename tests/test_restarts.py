"""Restart intensity and backoff, as pure arithmetic over an injected time."""

import random

from supervisor.restarts import RestartPolicy, RestartType


def policy(
    *,
    restart_type: RestartType = RestartType.PERMANENT,
    max_restarts: int = 3,
    backoff_initial_sec: float = 0.1,
) -> RestartPolicy:
    return RestartPolicy(
        restart_type=restart_type,
        max_restarts=max_restarts,
        window_sec=60,
        backoff_initial_sec=backoff_initial_sec,
        backoff_max_sec=1.0,
        backoff_reset_sec=30,
        jitter=0.0,
        rng=random.Random(1),
    )


def test_intensity_exceeded_after_max_restarts_within_window():
    p = policy()
    decisions = [p.on_death(float(t)) for t in range(4)]
    assert [d.restart for d in decisions] == [True, True, True, False]
    assert decisions[-1].intensity_exceeded
    assert "3 restarts in 60s" in decisions[-1].reason


def test_old_restarts_leave_the_window():
    p = policy()
    for t in (0, 1, 2):
        assert p.on_death(t).restart
    assert p.on_death(62.5).restart


def test_backoff_doubles_caps_and_resets_after_quiet_period():
    p = policy(max_restarts=100)
    delays = [p.on_death(float(t)).delay_sec for t in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.on_death(100.0).delay_sec == 0.1


def test_zero_backoff_restarts_at_once():
    assert policy(backoff_initial_sec=0).on_death(0).delay_sec == 0


def test_restart_types():
    assert not policy(restart_type=RestartType.TEMPORARY).on_death(0).restart
    transient = policy(restart_type=RestartType.TRANSIENT)
    assert transient.on_death(0, abnormal=True).restart
    assert not transient.on_death(1, abnormal=False).restart


def test_reset_forgets_history():
    p = policy(max_restarts=1)
    assert p.on_death(0).restart
    assert not p.on_death(1).restart
    p.reset()
    assert p.on_death(2).restart
