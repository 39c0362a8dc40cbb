"""Supervision through the embedding API: crashes, hangs, restart intensity, numbers that add up."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

from actors.results import ErrorType
from supervisor.status import Status
from tests.helpers import wait_until
from tests.runtimes import scan_calls

# These tests are about what the supervisor answers when an actor dies, so the call is not tried again.
NO_RETRY = {"retry": {"attempts": 0}}

TARGETS = {
    "nmap": {"target": "10.0.0.5"},
    "masscan": {"target": "10.0.0.5", "ports": "80"},
    "gobuster": {"target": "10.0.0.5"},
}


async def gather_calls(runtime, plan):
    return await asyncio.gather(*(runtime.acall(tool, TARGETS[tool], call_id=f"{tool}-{i}") for i, tool in plan))


def test_crash_storm_answers_every_call_once_and_requeues_the_queued(make_runtime):
    runtime = make_runtime(
        tools={name: {"max_queue": 300, "concurrency": 4, **NO_RETRY} for name in TARGETS},
        supervisor={"max_restarts": 1000, "stash_limit": 1000},
        faults=[{"tool": "nmap", "kind": "crash", "every": 10}],
    )
    plan = [(i, ("nmap", "masscan", "gobuster")[i % 3]) for i in range(600)]
    outcomes = asyncio.run(gather_calls(runtime, plan))
    assert len(outcomes) == 600
    assert len({o.call_id for o in outcomes}) == 600
    by_tool = Counter((o.tool, "ok" if o.ok else o.error_type.value) for o in outcomes)
    assert by_tool[("masscan", "ok")] == 200 and by_tool[("gobuster", "ok")] == 200
    crashed = by_tool[("nmap", "actor_restarted")]
    assert by_tool[("nmap", "ok")] + crashed == 200
    status = runtime.status()
    nmap = status.tools["nmap"]
    # Every call starts exactly once: queued calls survive a crash and start in the next
    # incarnation, so every 10th start crashing means exactly 20 crashes. The crashing call
    # and whatever else was running with it are answered actor_restarted.
    assert nmap.restarts == 20 and nmap.incarnation == 21
    assert 20 <= crashed <= 20 * 4
    assert nmap.last_restart_reason.startswith("crash: InjectedCrash")
    assert nmap.calls == {"ok": 200 - crashed, "actor_restarted": crashed}
    assert nmap.in_flight == 0 and nmap.queued == 0 and nmap.state == "running"
    # Crashing calls never spawn; the others running beside them may have been killed before spawning.
    spawned = len(scan_calls(runtime.settings.tools.nmap.binary))
    assert 180 - (crashed - 20) <= spawned <= 180
    assert status.tools["masscan"].restarts == 0


def test_intensity_exceeded_fails_one_tool_and_reset_brings_it_back(make_runtime):
    runtime = make_runtime(tools={"nmap": NO_RETRY}, supervisor={"max_restarts": 2, "restart_window_sec": 60})
    runtime.inject(tool="nmap", kind="crash", count=3)
    outcomes = [runtime.call("nmap", TARGETS["nmap"]) for _ in range(3)]
    assert [o.error_type for o in outcomes] == [ErrorType.ACTOR_RESTARTED] * 3
    status = wait_until(lambda: (s := runtime.status()).tools["nmap"].state == "failed" and s)
    assert status.health.status == "degraded" and status.health.ready
    assert not {c.name: c for c in status.health.checks}["actor:nmap"].ok
    assert "restarts in 60s" in status.tools["nmap"].failed_reason
    refused = runtime.call("nmap", TARGETS["nmap"])
    assert refused.error_type is ErrorType.TOOL_FAILED and "reset" in refused.error.message
    assert runtime.call("masscan", TARGETS["masscan"]).ok
    assert runtime.call("gobuster", TARGETS["gobuster"]).ok
    runtime.reset("nmap")
    assert runtime.status().tools["nmap"].state == "running"
    assert runtime.call("nmap", TARGETS["nmap"]).ok
    checks = {c.name: c for c in runtime.status().health.checks}
    assert checks["actor:nmap"].ok and checks["breaker:nmap"].ok


def test_escalate_stops_the_runtime(make_runtime):
    runtime = make_runtime(
        tools={"nmap": NO_RETRY}, supervisor={"max_restarts": 0, "on_intensity_exceeded": "escalate"}
    )
    runtime.inject(tool="nmap", kind="crash", count=1)
    assert runtime.call("nmap", TARGETS["nmap"]).error_type is ErrorType.ACTOR_RESTARTED
    assert runtime.escalated.wait(10)
    assert "nmap" in runtime.escalation_reason
    assert runtime.call("masscan", TARGETS["masscan"]).error_type is ErrorType.CANCELLED


def test_hung_actor_is_replaced_and_its_calls_answered(make_runtime, tmp_path):
    runtime = make_runtime(
        tools={"nmap": {"concurrency": 1, **NO_RETRY}},
        supervisor={"ping_interval_sec": 0.05, "ping_deadline_sec": 0.3},
    )
    runtime.inject(tool="nmap", kind="hang", count=1)

    async def scenario():
        hung = asyncio.create_task(runtime.acall("nmap", TARGETS["nmap"], call_id="hung"))
        queued = [asyncio.create_task(runtime.acall("nmap", TARGETS["nmap"], call_id=f"q{i}")) for i in range(3)]
        return await asyncio.wait_for(hung, 10), await asyncio.wait_for(asyncio.gather(*queued), 10)

    hung, queued = asyncio.run(scenario())
    assert hung.error_type is ErrorType.ACTOR_RESTARTED
    assert all(o.ok for o in queued), [o.error for o in queued]
    nmap = runtime.status().tools["nmap"]
    assert nmap.restarts == 1 and nmap.last_restart_reason.startswith("hang:")


def test_metrics_and_status_match_a_known_workload(make_runtime):
    runtime = make_runtime(tools={"gobuster": {"scenario": {"mode": "fail"}}})
    for _ in range(3):
        assert runtime.call("nmap", TARGETS["nmap"]).ok
    assert runtime.call("nmap", {"target": "8.8.8.8"}).error_type is ErrorType.VALIDATION
    assert runtime.call("gobuster", TARGETS["gobuster"]).error_type is ErrorType.EXECUTION
    runtime.inject(tool="masscan", kind="crash", count=1)
    retried = runtime.call("masscan", TARGETS["masscan"])  # its actor crashes under it; the retry is served
    assert retried.ok and [r.error_type for r in retried.retried] == [ErrorType.ACTOR_RESTARTED]
    assert runtime.call("masscan", TARGETS["masscan"]).ok

    text = runtime.metrics_text()

    def sample(name, **labels):
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        match = re.search(rf"^{name}{{{re.escape(selector)}}} (\S+)$", text, re.M)
        assert match, f"{name}{{{selector}}} missing"
        return float(match.group(1))

    assert sample("labrecon_tool_calls_total", outcome="ok", pool="local", tool="nmap") == 3
    assert sample("labrecon_tool_calls_total", outcome="validation", pool="local", tool="nmap") == 1
    assert sample("labrecon_tool_calls_total", outcome="execution", pool="local", tool="gobuster") == 1
    assert sample("labrecon_tool_calls_total", outcome="actor_restarted", pool="local", tool="masscan") == 1
    assert sample("labrecon_tool_calls_total", outcome="ok", pool="local", tool="masscan") == 2
    assert sample("labrecon_call_retries_total", reason="actor_restarted", pool="local", tool="masscan") == 1
    assert sample("labrecon_call_retries_total", reason="actor_restarted", pool="local", tool="nmap") == 0
    assert sample("labrecon_tool_call_duration_seconds_count", pool="local", tool="nmap") == 3
    assert sample("labrecon_actor_restarts_total", reason="crash", pool="local", tool="masscan") == 1
    assert sample("labrecon_tool_in_flight", pool="local", tool="nmap") == 0
    assert sample("labrecon_breaker_state", state="closed", pool="local", tool="gobuster") == 1
    assert "labrecon_build_info{" in text
    assert "10.0.0.5" not in text and "8.8.8.8" not in text

    status = Status.model_validate_json(runtime.status().model_dump_json())
    assert status.tools["nmap"].calls == {"ok": 3, "validation": 1}
    assert status.tools["masscan"].restarts == 1
    assert status.tools["masscan"].p50_sec is not None
    assert status.runtime.config_digest == runtime.settings.digest()
    assert status.faults and status.faults[0]["fired"] == 1


def test_the_supervisor_handles_an_event_as_it_arrives_without_waiting_for_another_message(make_runtime):
    # No pings for an hour: only the refusal's own event is there to be handled.
    runtime = make_runtime(supervisor={"ping_interval_sec": 3600})
    assert runtime.call("nmap", {"target": "8.8.8.8"}).error_type is ErrorType.VALIDATION
    wait_until(runtime.supervisor.ref.actor_inbox.empty, what="the refusal taken from the supervisor's inbox")
    assert runtime.status().tools["nmap"].calls == {"validation": 1}


def test_graceful_stop_lets_running_calls_finish(make_runtime, tmp_path):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "slow", "delay_sec": 0.5}}})

    async def scenario():
        task = asyncio.create_task(runtime.acall("nmap", TARGETS["nmap"]))
        await asyncio.to_thread(wait_until, lambda: scan_calls(runtime.settings.tools.nmap.binary))
        await asyncio.to_thread(runtime.stop, 10.0)
        return await task

    assert asyncio.run(scenario()).ok
    assert runtime.call("nmap", TARGETS["nmap"]).error_type is ErrorType.CANCELLED


def test_stop_after_grace_kills_and_answers(make_runtime):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "hang_with_child"}}})

    async def scenario():
        task = asyncio.create_task(runtime.acall("nmap", TARGETS["nmap"]))
        await asyncio.to_thread(wait_until, lambda: scan_calls(runtime.settings.tools.nmap.binary))
        await asyncio.to_thread(runtime.stop, 0.2)
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.error_type is ErrorType.CANCELLED
    from tests.helpers import process_alive

    (call,) = scan_calls(runtime.settings.tools.nmap.binary)
    wait_until(lambda: not process_alive(call["pid"]) and not process_alive(call["child_pid"]))
