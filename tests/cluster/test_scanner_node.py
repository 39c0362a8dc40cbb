"""A pool's runner driven as Ray drives it, outside a Ray worker: what its stream carries back, what it leaves behind.

The node is built in this process, which is no Ray worker; were it to start Ray by itself, Ray would
find the session's cluster (`ray_cluster`) and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.scanner_node import Ended, Lines, RemoteJob, ScannerNode, Spawned
from actors.tools import TOOL_SPECS
from supervisor.config import settings_from
from tests.helpers import wait_until
from tests.runtimes import fake_config, scan_calls

CALL = {"target": "10.0.0.5", "ports": "22"}
POOL_NETWORKS = (ipaddress.ip_network("10.0.0.0/24"),)


@pytest.fixture
def node_for(ray_cluster: Any, tmp_path: Path) -> Iterator[Any]:
    """`node_for(scenario)`: a runner of nmap on a pool holding 10.0.0.0/24, its fake behaving as `scenario` says."""
    nodes: list[ScannerNode] = []

    def make(**scenario: Any) -> tuple[ScannerNode, RemoteJob, str]:
        settings = settings_from(fake_config(tmp_path, tools={"nmap": {"scenario": scenario}}))
        nmap, policy = settings.tools.nmap, settings.policy
        prepared = prepare_call(TOOL_SPECS["nmap"], CALL, settings=nmap, policy=TargetPolicy(policy))
        node = ScannerNode("lab", POOL_NETWORKS, "nmap", nmap, policy)
        nodes.append(node)
        return node, RemoteJob("nmap-1", prepared), nmap.binary

    yield make
    for node in nodes:
        node._watchdog.close()  # as when the runner's worker exits: nothing is left for it to end


def test_a_node_built_outside_a_ray_worker_names_its_host_and_starts_no_ray(node_for):
    import ray

    try:
        node, _, _ = node_for()
        assert not ray.is_initialized()
        assert node.node == socket.gethostname()
    finally:
        if ray.is_initialized():
            ray.shutdown()


def test_only_the_lines_that_report_progress_go_back_and_the_whole_output_comes_with_the_end(node_for):
    node, job, _ = node_for(mode="slow", delay_sec=0.3, steps=3)

    events = list(node.run(job))

    assert isinstance(events[0], Spawned) and isinstance(events[-1], Ended)
    lines = [line for event in events if isinstance(event, Lines) for line in event.lines]
    assert [round(TOOL_SPECS["nmap"].progress(line) or -1) for line in lines] == [25, 50, 75]
    result = events[-1].result
    assert result.returncode == 0 and b"<taskprogress" in result.stdout and b"</nmaprun>" in result.stdout


def test_a_process_whose_stream_is_dropped_once_it_started_is_ended_and_reaped(node_for):
    node, job, nmap = node_for(mode="hang")
    stream = node.run(job)
    assert isinstance(next(stream), Spawned)
    (call,) = wait_until(lambda: scan_calls(nmap), timeout=30, what="the fake to record its start")

    stream.close()  # the front stopped listening right after the spawn

    wait_until(lambda: not psutil.pid_exists(call["pid"]), timeout=30, what="the fake to be ended and reaped")
