"""Calls run on the node of the pool that holds their targets, over stdio and Streamable HTTP with the SDK client;
a call reaching into two pools, or into none, is refused before anything is spawned anywhere."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from mcp import Client

from tests.cluster.pools_support import (
    HANG_GUARD_SEC,
    IN_A,
    IN_B,
    NOWHERE,
    POOLS_NAMED,
    SPANNING,
    nmap_of,
    nodes_ran_on,
    pool_runtime,
    stdio_server,
)
from tests.http_support import running_daemon, sdk_client
from tests.runtimes import scan_calls

NAMES = {
    "both.lab.internal": ["10.1.0.7", "10.2.0.7"],  # one address in each pool
    "db.lab.internal": ["10.2.0.8", "10.3.0.200"],  # both addresses in pool b's two networks
}


def lab_dns(name: str) -> list[Any]:
    return [ipaddress.ip_address(address) for address in NAMES[name]]


async def call_each_pool_then_outside(client: Client, *outside: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call into pool a and one into pool b, then calls for each of `outside`; their answers by target."""
    ran = {}
    for target in (IN_A, IN_B):
        result = await client.call_tool("nmap", {"target": target, "ports": "22"})
        assert not result.is_error, result.content
        ran[target] = result.structured_content
    refused = {}
    for target in outside:
        result = await client.call_tool("nmap", {"target": target, "ports": "22"})
        assert result.is_error
        refused[target] = result.structured_content
    return ran, refused


def assert_ran_on_their_pools(cluster: Any, ran: dict[str, Any]) -> None:
    for target, pool in ((IN_A, "a"), (IN_B, "b")):
        assert (ran[target]["pool"], ran[target]["node"]) == (pool, cluster.nodes[pool].node_id)
        assert ran[target]["result"]["hosts"][0]["address"] == target


def assert_refused_naming_the_pools(refused: dict[str, Any]) -> None:
    for target, answer in refused.items():
        error = answer["error"]
        assert error["error_type"] == "validation", error
        assert POOLS_NAMED in error["message"], error
        expected = "is in no scanner pool" if target == NOWHERE else "spans the pools a and b"
        assert expected in error["message"], error


def test_over_stdio_each_pools_calls_run_on_its_node_and_calls_outside_one_pool_spawn_nothing(ray_cluster, tmp_path):
    server, nmap = stdio_server(tmp_path, ray_cluster)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Client(server, mode="auto") as client:
            return await call_each_pool_then_outside(client, SPANNING, NOWHERE)

    ran, refused = asyncio.run(scenario())
    assert_ran_on_their_pools(ray_cluster, ran)
    assert_refused_naming_the_pools(refused)
    # The fake records every process it is, wherever it runs: two scans, on their pools' nodes, and nothing else.
    assert nodes_ran_on(ray_cluster, nmap) == ["a", "b"]


def test_over_streamable_http_each_pools_calls_run_on_its_node_and_calls_outside_one_pool_spawn_nothing(
    ray_cluster, tmp_path
):
    with (
        pool_runtime(tmp_path, ray_cluster, resolver=lab_dns, policy={"dns": True}) as runtime,
        running_daemon(runtime) as daemon,
    ):

        async def scenario(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
            async with sdk_client(kind, daemon.url) as client:
                return await call_each_pool_then_outside(client, SPANNING, NOWHERE, "both.lab.internal")

        for kind in ("legacy", "auto"):  # the handshake era, then 2026-07-28
            ran, refused = asyncio.run(scenario(kind))
            assert_ran_on_their_pools(ray_cluster, ran)
            assert_refused_naming_the_pools(refused)
        assert nodes_ran_on(ray_cluster, nmap_of(runtime)) == ["a", "b", "a", "b"]

        # A name whose addresses all lie in pool b runs there, on the first of them.
        named = runtime.call("nmap", {"target": "db.lab.internal", "ports": "22"}, timeout=HANG_GUARD_SEC)
        assert named.ok, named.error
        assert (named.pool, named.resolved_targets) == ("b", NAMES["db.lab.internal"])
        assert scan_calls(nmap_of(runtime))[-1]["argv"][-1] == "10.2.0.8"
        assert nodes_ran_on(ray_cluster, nmap_of(runtime))[-1] == "b"
