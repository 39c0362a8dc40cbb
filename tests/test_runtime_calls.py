"""Tool calls through the embedding API, on fake scanners: limits, breaker, timeouts, caps, cancel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from actors.api import UnknownTool
from actors.results import ErrorType
from tests.fakes.install import set_scenario
from tests.helpers import process_alive, wait_until
from tests.runtimes import scan_calls
from tests.test_hostile_inputs import CASES


def binary(runtime, tool):
    return getattr(runtime.settings.tools, tool).binary


def test_each_tool_runs_and_parses(make_runtime):
    runtime = make_runtime()
    nmap = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22,80"})
    assert nmap.ok, nmap.error
    assert [p["port"] for p in nmap.result["hosts"][0]["ports"]] == [22, 80]
    assert nmap.argv.count("10.0.0.5") == 1 and nmap.argv[1:3] == ["-oX", "-"]
    gobuster = runtime.call("gobuster", {"target": "web.lab.internal"})
    assert gobuster.ok, gobuster.error
    assert "Host: web.lab.internal" in gobuster.argv and "http://10.0.0.7/" in gobuster.argv
    assert gobuster.resolved_targets == ["10.0.0.7"]
    assert {f["path"] for f in gobuster.result["findings"]} >= {"/admin"}
    masscan = runtime.call("masscan", {"target": "10.0.0.0/30", "ports": "80"})
    assert masscan.ok, masscan.error
    assert masscan.result["hosts"], masscan.result


def test_unknown_tool_is_a_lookup_error(make_runtime):
    with pytest.raises(UnknownTool):
        make_runtime().call("metasploit", {"target": "10.0.0.5"})


@pytest.mark.parametrize("tool, arguments", CASES)
def test_hostile_calls_never_start_a_process(make_runtime, tool, arguments):
    runtime = make_runtime()
    outcome = runtime.call(tool, arguments)
    assert outcome.error_type is ErrorType.VALIDATION, outcome
    assert outcome.error.recovery_suggestion
    assert scan_calls(binary(runtime, tool)) == []
    assert runtime.status().tools[tool].calls == {"validation": 1}


def test_concurrency_two_queue_sixteen_twenty_calls(make_runtime, tmp_path):
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"concurrency": 2, "max_queue": 16, "scenario": {"mode": "block", "release_file": str(release)}}}
    )
    nmap = binary(runtime, "nmap")
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(runtime.call, "nmap", {"target": "10.0.0.5"}) for _ in range(20)]
        wait_until(lambda: len(scan_calls(nmap)) == 2, what="two fakes running")
        rejected = wait_until(lambda: [f.result() for f in futures if f.done()], what="the overflow refused")
        status = wait_until(
            lambda: (s := runtime.status().tools["nmap"]).queued == 16 and s, what="sixteen queued"
        )
        assert status.in_flight == 2
        assert len(rejected) == 2
        assert all(o.error_type is ErrorType.RESOURCE_EXHAUSTED and o.error.retry_after_sec for o in rejected)
        release.touch()
        outcomes = [f.result(timeout=60) for f in futures]
    assert sum(o.ok for o in outcomes) == 18
    assert sum(o.error_type is ErrorType.RESOURCE_EXHAUSTED for o in outcomes) == 2
    calls = scan_calls(nmap)
    assert len(calls) == 18
    events = sorted([(c["mono"], 1) for c in calls] + [(c["end_mono"], -1) for c in calls])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_breaker_trips_fails_fast_and_recovers(make_runtime):
    runtime = make_runtime(
        tools={"nmap": {"breaker": {"open_sec": 0.5, "jitter": 0}, "scenario": {"mode": "fail"}}}
    )
    nmap = binary(runtime, "nmap")
    failures = [runtime.call("nmap", {"target": "10.0.0.5"}) for _ in range(5)]
    assert all(o.error_type is ErrorType.EXECUTION for o in failures)
    fast = runtime.call("nmap", {"target": "10.0.0.5"})
    assert fast.error_type is ErrorType.CIRCUIT_OPEN
    assert 0 < fast.error.retry_after_sec <= 0.5
    assert len(scan_calls(nmap)) == 5, "an open circuit must not spawn"
    assert runtime.status().tools["nmap"].breaker.state == "open"
    set_scenario(nmap, mode="ok")
    wait_until(lambda: runtime.status().tools["nmap"].breaker.retry_after_sec == 0, what="open period over")
    trial = runtime.call("nmap", {"target": "10.0.0.5"})
    assert trial.ok
    assert len(scan_calls(nmap)) == 6
    assert runtime.status().tools["nmap"].breaker.state == "closed"


def test_an_opening_breaker_answers_the_queue_at_once(make_runtime, tmp_path):
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={
            "nmap": {
                "concurrency": 1,
                "breaker": {"failure_threshold": 1, "open_sec": 30, "jitter": 0},
                "scenario": {"mode": "block", "release_file": str(release), "exit_code": 1},
            }
        }
    )
    nmap = binary(runtime, "nmap")
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(runtime.call, "nmap", {"target": "10.0.0.5"})
        wait_until(lambda: len(scan_calls(nmap)) == 1, what="the first call running")
        queued = [pool.submit(runtime.call, "nmap", {"target": "10.0.0.5"}) for _ in range(5)]
        wait_until(lambda: runtime.status().tools["nmap"].queued == 5, what="five calls queued")
        release.touch()  # the running call fails, and that one failure opens the breaker
        assert first.result(timeout=30).error_type is ErrorType.EXECUTION
        answers = [future.result(timeout=30) for future in queued]
    assert all(o.error_type is ErrorType.CIRCUIT_OPEN for o in answers), answers
    assert all(0 < o.error.retry_after_sec <= 30 for o in answers)
    assert len(scan_calls(nmap)) == 1, "no queued call may run against a tool whose breaker opened"
    assert runtime.status().tools["nmap"].calls == {"execution": 1, "circuit_open": 5}


def test_validation_errors_do_not_touch_the_breaker(make_runtime):
    runtime = make_runtime(tools={"nmap": {"breaker": {"failure_threshold": 1}}})
    for _ in range(3):
        assert runtime.call("nmap", {"target": "8.8.8.8"}).error_type is ErrorType.VALIDATION
    assert runtime.status().tools["nmap"].breaker.state == "closed"


def test_timeout_kills_the_whole_process_group(make_runtime):
    runtime = make_runtime(tools={"nmap": {"kill_grace_sec": 0.5, "scenario": {"mode": "hang_with_child"}}})
    outcome = runtime.call("nmap", {"target": "10.0.0.5", "timeout_sec": 1})
    assert outcome.error_type is ErrorType.TIMEOUT and outcome.timed_out
    (call,) = scan_calls(binary(runtime, "nmap"))
    assert call["child_pid"] and call["pid"]
    assert not process_alive(call["pid"]) and not process_alive(call["child_pid"])


def test_output_flood_is_capped_and_memory_stays_bounded(make_runtime):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "flood", "flood_bytes": 200_000_000}}})
    before = psutil.Process().memory_info().rss
    outcome = runtime.call("nmap", {"target": "10.0.0.5"})
    grown = psutil.Process().memory_info().rss - before
    assert outcome.stdout_truncated
    assert grown < 64 << 20, f"RSS grew by {grown >> 20} MB reading a 200 MB flood"


def test_cancel_mid_run_kills_the_group_and_spares_the_breaker(make_runtime):
    runtime = make_runtime(
        tools={"nmap": {"breaker": {"failure_threshold": 1}, "scenario": {"mode": "hang_with_child"}}}
    )
    nmap = binary(runtime, "nmap")

    async def scenario():
        task = asyncio.create_task(runtime.acall("nmap", {"target": "10.0.0.5"}, call_id="c-1"))
        await asyncio.to_thread(wait_until, lambda: scan_calls(nmap) and scan_calls(nmap)[0].get("child_pid"))
        assert runtime.cancel("c-1")
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.error_type is ErrorType.CANCELLED
    (call,) = scan_calls(nmap)
    wait_until(lambda: not process_alive(call["pid"]) and not process_alive(call["child_pid"]), what="group gone")
    assert runtime.status().tools["nmap"].breaker.state == "closed"
    assert runtime.cancel("c-1") is False


def test_cancelling_a_queued_call_removes_it(make_runtime, tmp_path):
    release = tmp_path / "go"
    blocking = {"mode": "block", "release_file": str(release)}
    runtime = make_runtime(tools={"nmap": {"concurrency": 1, "scenario": blocking}})
    nmap = binary(runtime, "nmap")
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(runtime.call, "nmap", {"target": "10.0.0.5"}, call_id="first")
        wait_until(lambda: scan_calls(nmap))
        second = pool.submit(runtime.call, "nmap", {"target": "10.0.0.6"}, call_id="second")
        wait_until(lambda: runtime.status().tools["nmap"].queued == 1)
        assert runtime.cancel("second")
        assert second.result(timeout=10).error_type is ErrorType.CANCELLED
        release.touch()
        assert first.result(timeout=10).ok
    assert len(scan_calls(nmap)) == 1


def test_acall_cancelled_by_the_caller_kills_the_process(make_runtime):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "hang"}}})
    nmap = binary(runtime, "nmap")

    async def scenario():
        task = asyncio.create_task(runtime.acall("nmap", {"target": "10.0.0.5"}))
        await asyncio.to_thread(wait_until, lambda: scan_calls(nmap))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    (call,) = scan_calls(nmap)
    wait_until(lambda: not process_alive(call["pid"]), what="fake killed")
    wait_until(lambda: runtime.status().tools["nmap"].calls.get("cancelled") == 1)
