"""Races around crashes, restarts, cancels and shutdown: each call answered, and counted, once.

Every test here runs fake scanners only (tests/fakes), never touches the
network, and synchronises on observable state (`wait_until`, thread joins,
reply futures) rather than on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from actors.reply import ThreadReply
from actors.results import CallOutcome, ErrorType
from tests.fakes.install import set_scenario
from tests.helpers import process_alive, wait_until
from tests.runtimes import scan_calls

NMAP = {"target": "10.0.0.5"}
# For tests about how a dead incarnation's calls are answered: the answer is not tried again.
NO_RETRY = {"retry": {"attempts": 0}}


def nmap_binary(runtime) -> str:
    return runtime.settings.tools.nmap.binary


def restarted(runtime, tool: str = "nmap") -> None:
    """Wait until the next incarnation serves: the old one's crash report has been handled, its calls sorted out."""
    before = runtime.status().tools[tool].incarnation
    runtime.restart(tool)
    wait_until(lambda: runtime.status().tools[tool].incarnation > before, what="the next incarnation serving")


def run_in_daemon_thread(fn, *args, **kwargs):
    """Run `fn` on a daemon thread; returns (thread, box) where box gets the result."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, box


# --- 1. operator restart: the retired incarnation's on_stop answers and counts again ------------


def test_operator_restart_counts_a_running_call_once(make_runtime, tmp_path):
    """Restart sweeps the running call (actor_restarted, counted); the old actor's on_stop then
    reports it again as `cancelled`, so calls-by-outcome adds up to 2 for 1 call."""
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}, **NO_RETRY}}
    )
    with ThreadPoolExecutor(1) as pool:
        try:
            running = pool.submit(runtime.call, "nmap", NMAP)
            wait_until(lambda: len(scan_calls(nmap_binary(runtime))) == 1, what="the call running")
            restarted(runtime)
            assert running.result(10).error_type is ErrorType.ACTOR_RESTARTED
        finally:
            release.touch()
    nmap = wait_until(lambda: (s := runtime.status().tools["nmap"]).in_flight == 0 and s)
    assert nmap.calls == {"actor_restarted": 1}


def test_operator_restart_hands_queued_calls_to_the_next_incarnation(make_runtime, tmp_path):
    """DESIGN §3/§4: queued, not yet started calls are served by the next incarnation. The sweep
    does requeue them, but the retired actor's on_stop answers them `cancelled` first."""
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"concurrency": 1, "scenario": {"mode": "block", "release_file": str(release)}, **NO_RETRY}}
    )
    with ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(runtime.call, "nmap", NMAP, call_id="running")
            wait_until(lambda: len(scan_calls(nmap_binary(runtime))) == 1, what="the first call running")
            queued = pool.submit(runtime.call, "nmap", NMAP, call_id="queued")
            wait_until(lambda: runtime.status().tools["nmap"].queued == 1, what="the second call queued")
            restarted(runtime)
            release.touch()
            first, second = running.result(10), queued.result(10)
        finally:
            release.touch()
    assert first.error_type is ErrorType.ACTOR_RESTARTED
    assert second.ok, second.error


# --- 2. breaker: a trial call lost to a crash wedges HALF_OPEN forever --------------------------


def test_trial_call_lost_to_a_crash_does_not_wedge_the_breaker(make_runtime):
    runtime = make_runtime(
        tools={
            "nmap": {
                "breaker": {"failure_threshold": 1, "open_sec": 0.05, "jitter": 0},
                "scenario": {"mode": "fail"},
                **NO_RETRY,
            }
        }
    )
    assert runtime.call("nmap", NMAP).error_type is ErrorType.EXECUTION  # opens the breaker
    set_scenario(nmap_binary(runtime), mode="ok")
    runtime.inject(tool="nmap", kind="crash", count=1)
    wait_until(
        lambda: (b := runtime.status().tools["nmap"].breaker).state == "open" and b.retry_after_sec == 0,
        what="the open period over",
    )
    trial = runtime.call("nmap", NMAP)  # HALF_OPEN's one trial, and it crashes the actor
    assert trial.error_type is ErrorType.ACTOR_RESTARTED
    # The tool is healthy again: within a few retry hints (1 s each) a call must get through.
    def let_through() -> CallOutcome | None:
        outcome = runtime.call("nmap", NMAP)
        return None if outcome.error_type is ErrorType.CIRCUIT_OPEN else outcome

    outcome = wait_until(let_through, timeout=5, what="a call let through after the lost trial")
    assert outcome.ok


# --- 3. duplicate call ids: one call is never answered ----------------------------------------------


def test_two_calls_with_the_same_call_id_are_both_answered(make_runtime, tmp_path):
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"concurrency": 2, "scenario": {"mode": "block", "release_file": str(release)}}}
    )

    async def scenario():
        tasks = [asyncio.create_task(runtime.acall("nmap", NMAP, call_id="same")) for _ in range(2)]
        try:
            # Both running (the bug needs them side by side), or one refused at once (a fix).
            await asyncio.to_thread(
                wait_until, lambda: len(scan_calls(nmap_binary(runtime))) == 2 or any(t.done() for t in tasks)
            )
        finally:
            release.touch()
        done, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:
            task.cancel()
        return len(done), len(pending)

    done, pending = asyncio.run(scenario())
    # Either both run and are answered, or the duplicate is refused; never one left hanging.
    assert (done, pending) == (2, 0)


# --- 4. Runtime.call(timeout=...) is not honoured while an injected delay runs ------------------


def test_call_timeout_is_honoured_during_an_injected_delay(make_runtime):
    runtime = make_runtime()
    runtime.inject(tool="nmap", kind="delay", delay_sec=60, count=1)
    thread, box = run_in_daemon_thread(runtime.call, "nmap", NMAP, timeout=0.2)
    thread.join(5)  # the 0.2 s timeout cancels the call; a cancelled answer must follow promptly
    assert not thread.is_alive(), "Runtime.call(timeout=0.2) still waiting: cancel does not interrupt the delay"
    assert box[0].error_type is ErrorType.CANCELLED


# --- 5. stop() returns while the killed process groups still run --------------------------------


def test_stop_returns_after_the_process_groups_are_gone(make_runtime):
    runtime = make_runtime(tools={"nmap": {"kill_grace_sec": 2.0, "scenario": {"mode": "hang", "ignore_term": True}}})

    async def scenario():
        task = asyncio.create_task(runtime.acall("nmap", NMAP))
        await asyncio.to_thread(wait_until, lambda: scan_calls(nmap_binary(runtime)))
        await asyncio.to_thread(runtime.stop, 0.0)
        (call,) = scan_calls(nmap_binary(runtime))
        alive_after_stop = process_alive(call["pid"])
        return await task, alive_after_stop

    outcome, alive_after_stop = asyncio.run(scenario())
    assert outcome.error_type is ErrorType.CANCELLED
    assert not alive_after_stop, "stop() returned and answered `cancelled` while the scan still runs"


# --- 6. a second, concurrent stop() returns before anything is stopped --------------------------


def test_concurrent_stop_waits_for_the_shutdown_in_progress(make_runtime, tmp_path, monkeypatch):
    # Answers are recorded as they are handed over, on the answering thread: the caller's own
    # thread may take a moment longer to wake, and that is not what this test is about.
    delivered: list[CallOutcome] = []
    resolve = ThreadReply.resolve

    def recording_resolve(reply: ThreadReply[CallOutcome], value: CallOutcome, before: Any = None) -> bool:
        won = resolve(reply, value, before)
        if won:
            delivered.append(value)
        return won

    monkeypatch.setattr(ThreadReply, "resolve", recording_resolve)
    release = tmp_path / "release"
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "block", "release_file": str(release)}}})
    try:
        call_thread, _ = run_in_daemon_thread(runtime.call, "nmap", NMAP)
        wait_until(lambda: scan_calls(nmap_binary(runtime)), what="the call running")
        first_stop, _ = run_in_daemon_thread(runtime.stop, 1.0)  # e.g. the escalation thread
        wait_until(lambda: runtime.supervisor.slots["nmap"].state == "stopped", what="the first stop draining")
        runtime.stop(30.0)  # e.g. serve_http's `finally`, or `with Runtime.start(...)`'s exit
        # "every call is answered" once stop() returns
        assert delivered, "the second stop() returned while the first was still draining"
    finally:
        release.touch()
        call_thread.join(10)
        first_stop.join(10)


# --- 7. HALF_OPEN is decided by a call admitted before the breaker opened ------------------------


def test_half_open_is_decided_by_the_trial_not_by_an_older_call(make_runtime, tmp_path):
    old_release, trial_release = tmp_path / "old", tmp_path / "trial"
    runtime = make_runtime(
        tools={
            "nmap": {
                "concurrency": 2,
                "breaker": {"open_sec": 0.05, "jitter": 0},
                "scenario": {"mode": "block", "release_file": str(old_release)},
            }
        }
    )
    nmap = nmap_binary(runtime)
    with ThreadPoolExecutor(2) as pool:
        try:
            old = pool.submit(runtime.call, "nmap", NMAP)
            wait_until(lambda: len(scan_calls(nmap)) == 1, what="the old call running")
            runtime.force_breaker("nmap", "open")
            wait_until(
                lambda: (b := runtime.status().tools["nmap"].breaker).state == "open" and b.retry_after_sec == 0,
                what="the open period over",
            )
            set_scenario(nmap, mode="block", release_file=str(trial_release))
            trial = pool.submit(runtime.call, "nmap", NMAP)
            wait_until(lambda: len(scan_calls(nmap)) == 2, what="the trial running")
            assert runtime.status().tools["nmap"].breaker.state == "half_open"
            old_release.touch()
            assert old.result(10).ok
            # The trial has not answered yet, so HALF_OPEN must still be waiting for it.
            assert runtime.status().tools["nmap"].breaker.state == "half_open"
            trial_release.touch()
            assert trial.result(10).ok
        finally:
            old_release.touch()
            trial_release.touch()


# --- 8. the binary-version probe outlives stop() -------------------------------------------------


def test_stop_leaves_no_child_process_behind(make_runtime, tmp_path):
    """The health probe runs `<binary> --version` on a daemon thread nobody stops or joins."""
    slow = tmp_path / "slow-nmap"
    slow.write_text("#!/bin/sh\nexec sleep 4\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    runtime = make_runtime(tools={"nmap": {"binary": str(slow)}})
    me = psutil.Process(os.getpid())

    def probe_children():
        return [p for p in me.children(recursive=True) if "sleep" in " ".join(p.cmdline())]

    wait_until(probe_children, what="the version probe running")
    runtime.stop(grace=0.0)
    assert not [p for p in probe_children() if process_alive(p.pid)], "a probe process survived stop()"


def test_a_process_no_runner_can_take_is_killed_not_orphaned(make_runtime, monkeypatch):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "hang_with_child"}}})
    fake = nmap_binary(runtime)

    def no_thread_to_spare(self, fn, *args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", no_thread_to_spare)
    outcome = runtime.call("nmap", NMAP, timeout=30)
    assert outcome.error_type is ErrorType.ACTOR_RESTARTED  # the actor died handing the run over

    def fakes_left() -> list:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if any(fake in part for part in process.info["cmdline"] or ()):
                found.append(process)
        return found

    wait_until(lambda: not fakes_left(), what="the spawned fake and its child to be gone")
