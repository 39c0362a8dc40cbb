"""A pool's node or runner lost mid-call: every call it held is answered `node_lost`, no process is left, the
pool refuses fast while it has no node, and its runner comes back under the same supervision; other pools go on."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from actors.results import CallOutcome
from supervisor import Runtime
from tests.cluster.pools_support import HANG_GUARD_SEC, IN_A, IN_B, nmap_of, nodes_ran_on, pool_runtime
from tests.fakes.install import read_calls, running, set_scenario
from tests.helpers import process_alive, wait_until
from tests.runtimes import scan_calls

IN_FLIGHT = 3


def call(runtime: Runtime, target: str) -> CallOutcome:
    """One nmap call, answered within the hang guard (past it, the call is cancelled and the test fails)."""
    return runtime.call("nmap", {"target": target, "ports": "22"}, timeout=HANG_GUARD_SEC)


def all_running(nmap: str) -> list[dict[str, Any]]:
    """The scans running now, once all `IN_FLIGHT` are; else none."""
    scans = running(scan_calls(nmap))
    return scans if len(scans) == IN_FLIGHT else []


def test_losing_pool_bs_node_mid_call_answers_every_call_and_a_new_node_serves_the_pool_again(ray_cluster, tmp_path):
    lost_node = ray_cluster.nodes["b"].node_id
    with pool_runtime(tmp_path, ray_cluster, nmap={"concurrency": 4, "scenario": {"mode": "hang"}}) as runtime:
        nmap = nmap_of(runtime)
        with ThreadPoolExecutor(IN_FLIGHT) as callers:
            in_flight: list[Future[CallOutcome]] = [
                callers.submit(call, runtime, f"10.2.0.{host}") for host in range(1, IN_FLIGHT + 1)
            ]
            hanging = wait_until(lambda: all_running(nmap), HANG_GUARD_SEC, what=f"{IN_FLIGHT} scans running")
            assert {ray_cluster.name_of(scan["ray_node"]) for scan in hanging} == {"b"}
            set_scenario(nmap)  # scans from now on answer at once

            ray_cluster.remove_node("b")
            answers = [future.result(HANG_GUARD_SEC) for future in in_flight]

        for answer in answers:
            assert answer.error is not None and answer.error.error_type == "node_lost", answer.error
            assert answer.error.retry_after_sec == 1.0 and answer.pool == "b"
        # What ran on the lost node went with it: no process is left, on that node or any other.
        pids = [scan["pid"] for scan in hanging]
        wait_until(lambda: not any(process_alive(pid) for pid in pids), HANG_GUARD_SEC, what="the scans on b to end")
        assert all(scan["exit_code"] is None for scan in read_calls(nmap) if scan["pid"] in pids)  # killed, not ended

        # While no node has b's resource, b's calls are refused at once, and nothing runs.
        wait_until(lambda: not runtime.cluster.live("b"), HANG_GUARD_SEC, what="pool b to have no live node")
        scans_before = len(scan_calls(nmap))
        refused = call(runtime, IN_B)
        assert refused.error is not None and refused.error.error_type == "node_lost"
        assert "pool b has no live node" in refused.error.message and "labrecon_b" in refused.error.message
        assert (refused.error.retry_after_sec, refused.pool) == (1.0, "b")
        assert len(scan_calls(nmap)) == scans_before

        # The supervisor restarted b's runner (Ray never does), and says why.
        b = wait_until(lambda: (s := runtime.status().tools["nmap@b"]).incarnation == 2 and s, HANG_GUARD_SEC)
        assert b.restarts == 1, b
        assert b.last_restart_reason is not None and "RunnerLost" in b.last_restart_reason, b

        # Pool a never noticed.
        assert call(runtime, IN_A).ok
        assert nodes_ran_on(ray_cluster, nmap)[-1] == "a"

        # A node with b's resource joins: the restarted runner is placed on it, and b's calls run there.
        ray_cluster.add_node("b", "labrecon_b")
        wait_until(lambda: runtime.cluster.live("b"), HANG_GUARD_SEC, what="pool b to have a live node again")
        back = call(runtime, IN_B)
        assert back.ok, back.error
        assert back.node == ray_cluster.nodes["b"].node_id != lost_node
        assert scan_calls(nmap)[-1]["ray_node"]["node_id"] == back.node

        a, b = runtime.status().tools["nmap@a"], runtime.status().tools["nmap@b"]
        assert (a.restarts, a.incarnation, a.calls) == (0, 1, {"ok": 1}), a
        # The calls lost in flight, and the one refused while b had no node: each counted under pool b.
        assert (b.restarts, b.state) == (1, "running") and b.calls == {"node_lost": IN_FLIGHT + 1, "ok": 1}, b


def test_a_runner_lost_fault_on_pool_b_answers_its_call_node_lost_and_the_restarted_runner_serves(
    ray_cluster, tmp_path
):
    with pool_runtime(tmp_path, ray_cluster) as runtime:
        runtime.inject(tool="nmap", kind="runner_lost", pool="b", count=1)
        assert call(runtime, IN_A).ok  # the rule is b's: a's call passes it by
        lost = call(runtime, IN_B)
        assert lost.error is not None and lost.error.error_type == "node_lost", lost.error
        assert lost.error.message.startswith("the scanner node was lost"), lost.error

        # The answer goes out before the actor dies of it; its restart follows.
        b = wait_until(lambda: (s := runtime.status().tools["nmap@b"]).incarnation == 2 and s, HANG_GUARD_SEC)
        assert b.restarts == 1 and "RunnerLost" in (b.last_restart_reason or ""), b
        again = call(runtime, IN_B)
        assert again.ok and again.node == ray_cluster.nodes["b"].node_id, again.error
        assert nodes_ran_on(ray_cluster, nmap_of(runtime)) == ["a", "b"]  # the lost call spawned nothing
        assert runtime.status().tools["nmap@a"].restarts == 0


def test_a_crash_fault_on_pool_a_restarts_pool_as_slot_only(ray_cluster, tmp_path):
    with pool_runtime(tmp_path, ray_cluster) as runtime:
        assert call(runtime, IN_B).ok
        runtime.inject(tool="nmap", kind="crash", pool="a", count=1)
        crashed = call(runtime, IN_A)
        # The crash killed a's actor around the call; the call was tried again on its next incarnation.
        assert crashed.ok and crashed.attempts == 2, crashed
        assert [attempt.error_type for attempt in crashed.retried] == ["actor_restarted"]
        assert crashed.node == ray_cluster.nodes["a"].node_id

        a, b = runtime.status().tools["nmap@a"], runtime.status().tools["nmap@b"]
        assert (a.restarts, a.incarnation) == (1, 2) and "InjectedCrash" in (a.last_restart_reason or ""), a
        assert (b.restarts, b.incarnation, b.state) == (0, 1, "running"), b
        assert call(runtime, IN_B).ok
        assert nodes_ran_on(ray_cluster, nmap_of(runtime)) == ["b", "a", "b"]


def test_a_call_queued_behind_a_lost_runner_runs_on_another_node_of_the_pool(ray_cluster, tmp_path):
    """The queue is not started on the dead runner: it goes to the next one, placed on the node still there."""
    ray_cluster.add_node("b2", "labrecon_b")
    try:
        with pool_runtime(tmp_path, ray_cluster, nmap={"concurrency": 1, "scenario": {"mode": "hang"}}) as runtime:
            nmap = nmap_of(runtime)
            with ThreadPoolExecutor(2) as callers:
                first = callers.submit(call, runtime, "10.2.0.1")
                (hung,) = wait_until(lambda: running(scan_calls(nmap)), HANG_GUARD_SEC, what="the first scan running")
                queued = callers.submit(call, runtime, "10.2.0.2")
                wait_until(lambda: runtime.status().tools["nmap@b"].queued == 1, HANG_GUARD_SEC, what="one queued")
                set_scenario(nmap)  # scans from now on answer at once
                ray_cluster.remove_node(ray_cluster.name_of(hung["ray_node"]) or "")
                lost, moved = first.result(HANG_GUARD_SEC), queued.result(HANG_GUARD_SEC)
        assert lost.error is not None and lost.error.error_type == "node_lost", lost.error
        assert moved.ok, moved.error
        assert moved.node is not None and moved.node != hung["ray_node"]["node_id"]
    finally:
        if "b2" in ray_cluster.nodes:
            ray_cluster.remove_node("b2")
