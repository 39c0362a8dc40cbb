"""A scan on a pool node behaves as one here: progress reaches the SDK client, a cancel ends the process on its
node, and a reload reaches the node's runner (or is refused when it would leave a pool outside the policy)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import anyio
import pytest

from supervisor.config import ConfigError
from tests.cluster.pools_support import HANG_GUARD_SEC, IN_B, nmap_of, nodes_ran_on, pool_config, pool_runtime
from tests.fakes.install import running, set_scenario
from tests.helpers import process_alive, wait_until
from tests.http_support import running_daemon, sdk_client
from tests.runtimes import scan_calls

SLOW = {"mode": "slow", "delay_sec": 1, "steps": 4}


def test_progress_reaches_the_sdk_client_and_its_cancel_ends_the_process_on_pool_bs_node(ray_cluster, tmp_path):
    with pool_runtime(tmp_path, ray_cluster, nmap={"scenario": SLOW}) as runtime, running_daemon(runtime) as daemon:
        nmap = nmap_of(runtime)
        seen: list[tuple[float, float | None, str | None]] = []

        async def scenario() -> Any:
            async with sdk_client("auto", daemon.url) as client:

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append((progress, total, message))

                result = await client.call_tool("nmap", {"target": IN_B}, progress_callback=on_progress)
                assert not result.is_error, result.content
                assert result.structured_content["pool"] == "b"

                set_scenario(nmap, mode="hang")
                async with anyio.create_task_group() as group:
                    group.start_soon(client.call_tool, "nmap", {"target": IN_B})
                    await anyio.to_thread.run_sync(lambda: wait_until(lambda: running(scan_calls(nmap)), 60))
                    group.cancel_scope.cancel()  # the SDK sends notifications/cancelled
                return scan_calls(nmap)[-1]

        hung = asyncio.run(scenario())
        # The fake's own reports, streamed back from its node, between the start and the end of its process.
        assert [progress for progress, _, _ in seen] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        assert seen[0][2] == "nmap@b started" and seen[-1][2] == "nmap@b ended"
        assert nodes_ran_on(ray_cluster, nmap) == ["b", "b"]
        wait_until(lambda: not process_alive(hung["pid"]), HANG_GUARD_SEC, what="the cancelled scan's process to end")
        status = wait_until(lambda: (s := runtime.status().tools["nmap@b"]).in_flight == 0 and s, HANG_GUARD_SEC)
        assert status.calls == {"ok": 1, "cancelled": 1} and status.restarts == 0, status


def test_scan_cancel_answers_a_scan_on_pool_bs_node_cancelled_and_ends_its_process(ray_cluster, tmp_path):
    scans = {"inline_wait_sec": 0.5}  # a call answers `working` with its scan id at once
    hanging = {"scenario": {"mode": "hang"}}
    with (
        pool_runtime(tmp_path, ray_cluster, nmap=hanging, scans=scans) as runtime,
        running_daemon(runtime) as daemon,
    ):
        nmap = nmap_of(runtime)

        async def scenario() -> dict[str, Any]:
            async with sdk_client("legacy", daemon.url) as client:
                working = await client.call_tool("nmap", {"target": IN_B})
                assert working.structured_content["status"] == "working", working.structured_content
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: running(scan_calls(nmap)), 60))
                scan_id = working.structured_content["scan_id"]
                cancelled = await client.call_tool("scan_cancel", {"scan_id": scan_id})
                assert not cancelled.is_error, cancelled.content
                return cancelled.structured_content

        answer = asyncio.run(scenario())
    assert answer["status"] == "cancelled", answer
    (hung,) = scan_calls(nmap)
    assert ray_cluster.name_of(hung["ray_node"]) == "b"
    wait_until(lambda: not process_alive(hung["pid"]), HANG_GUARD_SEC, what="the cancelled scan's process to end")


def test_a_reload_reaches_the_pool_runners_and_one_leaving_a_pool_outside_the_policy_is_refused(ray_cluster, tmp_path):
    config = pool_config(tmp_path, ray_cluster, nmap={"timeout_sec": 60, "max_timeout_sec": 100})
    longer = {"target": IN_B, "ports": "22", "timeout_sec": 200}
    with pool_runtime(tmp_path, ray_cluster, config=config) as runtime:
        above = runtime.call("nmap", longer, timeout=HANG_GUARD_SEC)
        assert above.error is not None and "above the maximum of 100" in above.error.message

        # Pool b's network would no longer be allowed: refused as a whole, nothing changes.
        narrowed = copy.deepcopy(config)
        narrowed["policy"]["allowed_networks"] = ["10.1.0.0/16", "10.3.0.0/24"]
        with pytest.raises(ConfigError, match=r"cluster\.pools\[1\]\.networks: 10\.2\.0\.0/16 is not inside"):
            runtime.reload(narrowed)
        assert runtime.status().config.refused == 1
        assert runtime.call("nmap", {"target": IN_B, "ports": "22"}, timeout=HANG_GUARD_SEC).ok

        # A longer maximum: the front admits the call, and only a node runner that got the new settings runs it.
        raised = copy.deepcopy(config)
        raised["tools"]["nmap"]["max_timeout_sec"] = 400
        attempt = runtime.reload(raised)
        assert attempt.ok and "tools.nmap.max_timeout_sec" in attempt.changed, attempt
        ran = runtime.call("nmap", longer, timeout=HANG_GUARD_SEC)
        assert ran.ok, ran.error
        assert (ran.pool, ran.node) == ("b", ray_cluster.nodes["b"].node_id)
        assert nodes_ran_on(ray_cluster, nmap_of(runtime)) == ["b", "b"]
