"""The call ledger, fed events by hand over an injected clock: the numbers status and metrics show."""

from __future__ import annotations

import re

from supervisor.ledger import RESERVOIR, CallLedger
from supervisor.metrics import Metrics

TOOLS = ("nmap", "masscan")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An observer that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def call_counted(self, tool, outcome, duration_sec, ran):
        self.seen.append(("call_counted", tool, outcome, duration_sec, ran))

    def load_changed(self, tool, *, in_flight, queued):
        self.seen.append(("load_changed", tool, in_flight, queued))

    def breaker_changed(self, tool, state):
        self.seen.append(("breaker_changed", tool, state))

    def serving_changed(self, tool, serving):
        self.seen.append(("serving_changed", tool, serving))

    def restart_counted(self, tool, reason):
        self.seen.append(("restart_counted", tool, reason))

    def restart_timed(self, tool, seconds):
        self.seen.append(("restart_timed", tool, seconds))

    def retry_counted(self, tool, reason):
        self.seen.append(("retry_counted", tool, reason))


def new_ledger(clock=None, observer=None) -> CallLedger:
    return CallLedger(TOOLS, clock=clock or Clock(), observer=observer)


def test_a_call_is_queued_then_running_then_gone_and_counted():
    ledger = new_ledger()
    ledger.call_queued("nmap", "a")
    assert (ledger.numbers("nmap").queued, ledger.numbers("nmap").in_flight) == (1, 0)
    ledger.call_started("nmap", "a")
    assert (ledger.numbers("nmap").queued, ledger.numbers("nmap").in_flight) == (0, 1)
    ledger.call_finished("nmap", "a", "ok", 2.0, True)
    numbers = ledger.numbers("nmap")
    assert (numbers.queued, numbers.in_flight) == (0, 0)
    assert numbers.calls == {"ok": 1}
    assert numbers.p50_sec == numbers.p95_sec == 2.0
    assert ledger.numbers("masscan").calls == {}


def test_a_call_that_starts_at_once_is_only_reported_running():
    ledger = new_ledger()
    ledger.call_started("nmap", "a")
    ledger.call_started("nmap", "b")
    assert ledger.numbers("nmap").in_flight == 2
    ledger.call_finished("nmap", "a", "timeout", 5.0, True)
    assert ledger.numbers("nmap").in_flight == 1


def test_finishing_a_call_the_ledger_never_saw_counts_it_without_going_negative():
    ledger = new_ledger()
    ledger.call_finished("nmap", "unknown", "cancelled", 0.5, False)
    ledger.call_finished("nmap", "unknown", "cancelled", 0.5, False)
    numbers = ledger.numbers("nmap")
    assert (numbers.in_flight, numbers.queued) == (0, 0)
    assert numbers.calls == {"cancelled": 2}


def test_calls_that_ran_no_process_count_but_stay_out_of_the_latencies():
    ledger = new_ledger()
    ledger.call_refused("nmap", "validation")
    ledger.call_finished("nmap", "a", "circuit_open", 0.0, False)
    numbers = ledger.numbers("nmap")
    assert numbers.calls == {"validation": 1, "circuit_open": 1}
    assert numbers.p50_sec is None and numbers.p95_sec is None


def test_a_call_the_supervisor_answers_is_timed_from_its_admission_on_the_ledgers_clock():
    clock = Clock(100.0)
    recorder = Recorder()
    ledger = new_ledger(clock, recorder)
    clock.now = 107.5
    ledger.call_answered("nmap", "actor_restarted", admitted_at=100.0, ran=True)
    assert ledger.numbers("nmap").p50_sec == 7.5
    assert recorder.seen == [("call_counted", "nmap", "actor_restarted", 7.5, True)]


def test_retries_are_counted_by_reason_and_told_to_the_observer():
    recorder = Recorder()
    ledger = new_ledger(observer=recorder)
    ledger.call_retried("nmap", "actor_restarted")
    ledger.call_retried("nmap", "actor_restarted")
    ledger.call_retried("nmap", "spawn_error")
    assert ledger.numbers("nmap").retries == {"actor_restarted": 2, "spawn_error": 1}
    assert ledger.numbers("masscan").retries == {}
    assert recorder.seen == [
        ("retry_counted", "nmap", "actor_restarted"),
        ("retry_counted", "nmap", "actor_restarted"),
        ("retry_counted", "nmap", "spawn_error"),
    ]


def test_percentiles_are_nearest_rank_over_the_most_recent_durations():
    ledger = new_ledger()
    for i in range(1, 102):
        ledger.call_finished("nmap", str(i), "ok", float(i), True)
    numbers = ledger.numbers("nmap")
    assert (numbers.p50_sec, numbers.p95_sec) == (51.0, 96.0)
    for i in range(RESERVOIR):
        ledger.call_finished("nmap", f"late-{i}", "ok", 1000.0, True)
    numbers = ledger.numbers("nmap")
    assert (numbers.p50_sec, numbers.p95_sec) == (1000.0, 1000.0)
    assert numbers.calls == {"ok": 101 + RESERVOIR}


def test_a_death_forgets_what_the_dead_incarnation_held_and_counts_the_restart():
    recorder = Recorder()
    ledger = new_ledger(observer=recorder)
    ledger.call_started("nmap", "running")
    ledger.call_queued("nmap", "queued")
    ledger.call_started("masscan", "other")
    ledger.child_died("nmap", "crash", "killed by SIGSEGV")
    nmap = ledger.numbers("nmap")
    assert (nmap.in_flight, nmap.queued) == (0, 0)
    assert nmap.restarts == 1 and nmap.last_restart_reason == "crash: killed by SIGSEGV"
    assert ledger.numbers("masscan").in_flight == 1
    assert ("restart_counted", "nmap", "crash") in recorder.seen
    assert recorder.seen[-1] == ("serving_changed", "nmap", False)
    # The next incarnation reports the queued call again, and it is counted once.
    ledger.call_queued("nmap", "queued")
    assert ledger.numbers("nmap").queued == 1


def test_a_restart_lasts_from_the_death_seen_to_the_successor_reading_its_mailbox():
    clock = Clock(10.0)
    recorder = Recorder()
    ledger = new_ledger(clock, recorder)
    ledger.child_reading("nmap", at=10.0)  # a first incarnation: no restart to time
    assert ledger.numbers("nmap").restart_p50_sec is None
    ledger.child_died("nmap", "hang", "no answer to a ping for 5.0s")
    ledger.child_reading("nmap", at=10.25)
    ledger.child_reading("nmap", at=99.0)  # read twice: the restart was already over
    numbers = ledger.numbers("nmap")
    assert numbers.restart_p50_sec == numbers.restart_p99_sec == 0.25
    assert [event for event in recorder.seen if event[0] == "restart_timed"] == [("restart_timed", "nmap", 0.25)]


def test_the_observer_is_told_each_change_with_the_numbers_after_it():
    recorder = Recorder()
    ledger = new_ledger(observer=recorder)
    ledger.child_installed("nmap")
    ledger.call_queued("nmap", "a")
    ledger.call_started("nmap", "a")
    ledger.call_finished("nmap", "a", "ok", 1.0, True)
    ledger.breaker_changed("nmap", "open")
    assert recorder.seen == [
        ("serving_changed", "nmap", True),
        ("load_changed", "nmap", 0, 1),
        ("load_changed", "nmap", 1, 0),
        ("load_changed", "nmap", 0, 0),
        ("call_counted", "nmap", "ok", 1.0, True),
        ("breaker_changed", "nmap", "open"),
    ]


def test_uptime_is_read_off_the_injected_clock():
    clock = Clock(50.0)
    ledger = new_ledger(clock)
    clock.now = 62.5
    assert ledger.uptime_sec() == 12.5


def test_the_prometheus_metrics_mirror_the_ledger():
    metrics = Metrics(TOOLS, "0.0.0")
    ledger = new_ledger(observer=metrics)
    ledger.call_started("nmap", "a")
    ledger.call_queued("nmap", "b")
    ledger.call_finished("nmap", "c", "ok", 0.2, True)
    ledger.call_refused("masscan", "validation")
    ledger.breaker_changed("masscan", "half_open")
    ledger.child_died("masscan", "operator", "restart requested")
    ledger.call_retried("nmap", "spawn_error")
    text = metrics.text().decode()

    def sample(name: str, **labels: str) -> float:
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        match = re.search(rf"^{name}{{{re.escape(selector)}}} (\S+)$", text, re.MULTILINE)
        assert match, f"{name}{{{selector}}} missing"
        return float(match.group(1))

    assert sample("labrecon_tool_in_flight", pool="local", tool="nmap") == ledger.numbers("nmap").in_flight == 1
    assert sample("labrecon_tool_queue_depth", pool="local", tool="nmap") == ledger.numbers("nmap").queued == 1
    assert sample("labrecon_tool_calls_total", outcome="ok", pool="local", tool="nmap") == 1
    assert sample("labrecon_tool_call_duration_seconds_count", pool="local", tool="nmap") == 1
    assert sample("labrecon_tool_calls_total", outcome="validation", pool="local", tool="masscan") == 1
    assert sample("labrecon_breaker_state", state="half_open", pool="local", tool="masscan") == 1
    assert sample("labrecon_breaker_state", state="closed", pool="local", tool="masscan") == 0
    assert sample("labrecon_actor_restarts_total", reason="operator", pool="local", tool="masscan") == 1
    assert sample("labrecon_tool_up", pool="local", tool="masscan") == 0
    assert sample("labrecon_tool_up", pool="local", tool="nmap") == 1
    assert sample("labrecon_call_retries_total", reason="spawn_error", pool="local", tool="nmap") == 1
    assert sample("labrecon_call_retries_total", reason="actor_restarted", pool="local", tool="nmap") == 0
