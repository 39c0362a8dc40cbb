"""labrecon on the session's cluster: pool a on node "a", pool b on node "b", nmap run by a fake.

Runtimes here are the test process's own (it joins the cluster as their driver); stdio servers are
`labrecon serve` children that join it themselves. Only nmap serves, so each runtime places two
runners (nmap@a, nmap@b). Pool a holds 10.1.0.0/16 and 10.3.0.0/25, pool b 10.2.0.0/16 and
10.3.0.128/25: 10.3.0.0/24 reaches into both, 10.9.0.0/16 into neither.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp import StdioServerParameters

from actors.policy import Resolver
from supervisor import Runtime
from tests.cluster.local_cluster import LocalCluster
from tests.http_support import write_fake_config
from tests.runtimes import fake_config, scan_calls

POOL_A = {"name": "a", "networks": ["10.1.0.0/16", "10.3.0.0/25"], "resource": "labrecon_a"}
POOL_B = {"name": "b", "networks": ["10.2.0.0/16", "10.3.0.128/25"], "resource": "labrecon_b"}
IN_A, IN_B = "10.1.0.5", "10.2.0.5"
SPANNING = "10.3.0.0/24"  # half in a, half in b
NOWHERE = "10.9.0.5"  # allowed by the policy, in no pool
POOLS_NAMED = "pools: a (10.1.0.0/16, 10.3.0.0/25), b (10.2.0.0/16, 10.3.0.128/25)"
HANG_GUARD_SEC = 90.0  # no wait here is meant to come near it: a call on a node takes well under a second
# The watcher looks often, so a lost node is seen at once; a runner being placed may wait for a worker to start.
CLUSTER_TIMING = {"watch_interval_sec": 0.2, "placement_timeout_sec": 60.0}
ONLY_NMAP = {"masscan": {"enabled": False}, "gobuster": {"enabled": False}}
LABRECON = str(Path(sys.executable).with_name("labrecon"))


def pool_config(
    directory: Path, cluster: LocalCluster, *, nmap: dict[str, Any] | None = None, **sections: Any
) -> dict[str, Any]:
    """A config dict: pools a and b on `cluster`, nmap run by a fake in `directory` (`nmap` adds its keys and
    `scenario`), the other tools off; `sections` as for `fake_config`."""
    config = fake_config(directory, tools={"nmap": nmap or {}, **ONLY_NMAP}, **sections)
    config["cluster"] = {**cluster.cluster_section(POOL_A, POOL_B), **CLUSTER_TIMING}
    return config


@contextmanager
def pool_runtime(
    directory: Path,
    cluster: LocalCluster,
    *,
    config: dict[str, Any] | None = None,
    resolver: Resolver | None = None,
    **kwargs: Any,
) -> Iterator[Runtime]:
    """A started runtime on `config` (default: `pool_config(directory, cluster, **kwargs)`) asking `resolver` for
    names, stopped afterwards."""
    runtime = Runtime.start(config or pool_config(directory, cluster, **kwargs), resolver=resolver)
    try:
        yield runtime
    finally:
        runtime.stop(grace=2.0)


def nmap_of(runtime: Runtime) -> str:
    return runtime.settings.tools.nmap.binary


def nodes_ran_on(cluster: LocalCluster, binary: Path | str) -> list[str | None]:
    """The name of the node each scan of the fake at `binary` ran on, oldest first (None: not a current node)."""
    return [cluster.name_of(call["ray_node"]) for call in scan_calls(binary)]


def pools_toml(cluster: LocalCluster) -> list[str]:
    """The `[cluster]` section of `pool_config`, as TOML lines."""
    lines = ["[cluster]", 'engine = "ray"', f'address = "{cluster.address}"']
    lines += [f"{key} = {value}" for key, value in CLUSTER_TIMING.items()]
    for pool in (POOL_A, POOL_B):
        networks = ", ".join(f'"{network}"' for network in pool["networks"])
        lines += ["[[cluster.pools]]", f'name = "{pool["name"]}"', f"networks = [{networks}]"]
        lines.append(f'resource = "{pool["resource"]}"')
    return lines


def stdio_server(directory: Path, cluster: LocalCluster) -> tuple[StdioServerParameters, Path]:
    """`labrecon serve` over stdio with the pools of `pool_config`, and the fake nmap it runs."""
    config = write_fake_config(directory, pools_toml(cluster), tools={"masscan": ["enabled = false"],
                                                                        "gobuster": ["enabled = false"]})
    passed = ("PATH", "XDG_STATE_HOME", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")
    server = StdioServerParameters(
        command=LABRECON,
        args=["serve", "--config", str(config)],
        env={name: os.environ[name] for name in passed if name in os.environ},
    )
    return server, directory / "bin" / "nmap"
