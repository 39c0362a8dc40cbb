"""The fault schedule: which calls get which fault, reproducibly."""

from actors.faults import FaultKind
from supervisor.config import FaultSettings
from supervisor.faults import FaultPlan


def fired(plan, tool="nmap", n=20):
    return [i for i in range(1, n + 1) if plan(tool, f"c{i}") is not None]


def test_count_hits_the_next_n_calls_only():
    plan = FaultPlan((FaultSettings(tool="nmap", kind="fail", count=3),))
    assert fired(plan) == [1, 2, 3]


def test_every_nth_call():
    plan = FaultPlan((FaultSettings(tool="nmap", kind="crash", every=10),))
    assert fired(plan, n=35) == [10, 20, 30]


def test_probability_with_seed_is_reproducible_and_roughly_right():
    def run():
        return fired(FaultPlan((FaultSettings(tool="nmap", kind="fail", probability=0.2, seed=42),)), n=1000)

    first, second = run(), run()
    assert first == second
    assert 150 < len(first) < 250


def test_rules_are_per_tool_and_carry_their_kind():
    plan = FaultPlan()
    plan.add(FaultSettings(tool="masscan", kind="delay", delay_sec=0.5))
    assert plan("nmap", "x") is None
    fault = plan("masscan", "y")
    assert fault is not None
    assert fault.kind is FaultKind.DELAY and fault.delay_sec == 0.5


def test_clear_releases_hangs_and_lists_what_is_left():
    plan = FaultPlan()
    hang = plan.add(FaultSettings(tool="nmap", kind="hang", count=1))
    plan.add(FaultSettings(tool="gobuster", kind="fail", every=2))
    fault = plan("nmap", "a")
    assert fault is not None
    assert not fault.released.is_set()
    assert plan.clear(hang) == 1
    assert fault.released.is_set()
    assert [rule["tool"] for rule in plan.list()] == ["gobuster"]
    assert plan.clear(tool="gobuster") == 1 and plan.list() == []
