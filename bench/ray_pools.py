"""Scanner pools benchmark: what a call pays to run on a Ray pool node instead of here, and Ray's idle memory.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/ray_pools.py' [--rounds 20]
        [--block 20] [--out bench/results/ray_pools.txt]

Ray binds to the machine's own address, so this runs only in a network namespace whose one
interface is loopback (it refuses to start anywhere else). In one run it starts a local Ray
cluster (a head and one pool node advertising the pool's resource, no dashboard, no usage stats)
and two runtimes in this process, both calling the fast fake nmap (bench/fast_fakes.py) through
the embedding API (`Runtime.acall`): one runs it here (`[cluster] engine = "local"`), the other on
the pool that holds the target's network (`engine = "ray"`). After a warm-up, blocks of calls
alternate between the two (the first to go swaps every round) so machine noise hits both alike:
sequential (one caller) and 8-way (8 callers, concurrency 8 on both). Figures: p50 and p99 of each,
what Ray adds (ms) and the ratio, and the CPU per call of every process involved; then the idle
memory of labrecon's process (before Ray was imported, and once joined to the cluster) beside Ray's
own processes (RSS and PSS, by kind and by node). Ray's dashboard is off, but Ray still starts its
minimal head and agents: they are counted.
Everything it started is stopped, and no Ray process of this namespace may be left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from supervisor import Runtime
from tests.cluster.local_cluster import LocalCluster, environment, inside_loopback_namespace, ray_processes

HOW_TO_RUN = "unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/ray_pools.py'"
CALL = {"target": "10.0.0.5", "ports": "22"}
POOL: dict[str, Any] = {
    "name": "lab",
    "networks": ["10.0.0.0/24"],
    "resource": "labrecon_lab",
    "concurrency": {"nmap": 8},
}
WIDTH = 8  # callers in the concurrent series
WARM_UP_CALLS = 100
IDLE_SEC = 3.0  # how long both stay idle before their memory is read
TARGET_ADDED_P50_MS = 3.0
MIB = 2**20
MS = 1000.0


def config(nmap: str, cluster: dict[str, Any] | None) -> dict[str, Any]:
    """nmap alone (the other tools off, so they place no runners), 8 at once; on `cluster`'s pool if given."""
    settings: dict[str, Any] = {
        "policy": {"dns": False, "allowed_networks": ["10.0.0.0/8"]},
        "tools": {
            "nmap": {"binary": nmap, "concurrency": WIDTH, "max_queue": 64},
            "masscan": {"enabled": False},
            "gobuster": {"enabled": False},
        },
    }
    if cluster is not None:
        settings["cluster"] = cluster
    return settings


class Series:
    """One runtime's latencies in one series, the CPU its blocks took, and what went wrong."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.cpu = 0.0  # seconds, every process of the run (this one, Ray's, the fakes they ran)
        self.failures: list[str] = []

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / len(self.latencies)

    async def call(self, runtime: Runtime) -> None:
        started = time.perf_counter()
        outcome = await runtime.acall("nmap", CALL)
        self.latencies.append(time.perf_counter() - started)
        if not outcome.ok:
            self.failures.append(outcome.error.message if outcome.error else "not ok")


async def sequential(runtime: Runtime, series: Series, calls: int) -> None:
    for _ in range(calls):
        await series.call(runtime)


async def concurrent(runtime: Runtime, series: Series, calls: int) -> None:
    """`calls` calls by `WIDTH` callers, each calling back to back."""
    per_caller = [calls // WIDTH + (1 if index < calls % WIDTH else 0) for index in range(WIDTH)]
    await asyncio.gather(*(sequential(runtime, series, count) for count in per_caller))


async def alternate(
    runtimes: dict[str, Runtime], shape: Any, rounds: int, block: int, processes: list[psutil.Process]
) -> dict[str, Series]:
    """`rounds` blocks of `block` calls on each runtime in turn, the first to go swapping every round.

    Each block's CPU is what `processes` (this one and Ray's, with the children they reaped) spent in it.
    """
    series = {name: Series() for name in runtimes}
    names = list(runtimes)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            before = cpu_seconds(processes)
            await shape(runtimes[name], series[name], block)
            series[name].cpu += cpu_seconds(processes) - before
    return series


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


# --- memory ------------------------------------------------------------------------------------


def kind_of(cmdline: list[str]) -> str:
    """What a Ray process is, from its command line."""
    text = " ".join(cmdline)
    for marker, kind in (
        ("gcs_server", "gcs_server"),
        ("raylet", "raylet"),
        ("log_monitor.py", "log monitor"),
        ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ):
        if marker in text:
            return kind
    if "dashboard/dashboard.py" in text:  # without the dashboard, Ray still starts its head, "--minimal"
        return "dashboard head" + (" (minimal)" if "--minimal" in text else "")
    if cmdline and cmdline[0].startswith("ray::"):  # a worker (IDLE, or the actor it hosts) or an agent
        return cmdline[0]
    if "default_worker.py" in text:
        return "worker (starting)"
    return "other: " + text[:60]


def memory_of(process: psutil.Process) -> tuple[int, int]:
    """RSS and PSS of `process`, bytes."""
    full = process.memory_full_info()
    return int(full.rss), int(getattr(full, "pss", full.rss))


def ray_memory(cluster: LocalCluster) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Ray's processes in this namespace by kind, and by node: how many, their RSS and PSS together.

    A process belongs to the node whose raylet it descends from; the rest (GCS, dashboard, monitors) to the head.
    """
    raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in cluster.nodes.items()}
    totals: dict[str, dict[str, list[int]]] = {
        "kind": defaultdict(lambda: [0, 0, 0]),
        "node": defaultdict(lambda: [0, 0, 0]),
    }
    for process in ray_processes():
        with contextlib.suppress(psutil.Error):
            rss, pss = memory_of(process)
            lineage = [process.pid, *(parent.pid for parent in process.parents())]
            node = next((raylets[pid] for pid in lineage if pid in raylets), "head")
            for entry in (totals["kind"][kind_of(process.cmdline())], totals["node"][node]):
                entry[0] += 1
                entry[1] += rss
                entry[2] += pss
    return {by: {key: (n, rss, pss) for key, (n, rss, pss) in sorted(found.items())} for by, found in totals.items()}


# --- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_environment(work: Path) -> Iterator[Path]:
    """Ray's files in a short temp dir of their own (its socket paths must stay short); no usage stats."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    (temp_dir / "ray").mkdir()
    try:
        with environment(RAY_TMPDIR=str(temp_dir), RAY_USAGE_STATS_ENABLED="0"):
            yield temp_dir
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_ray_to_exit(timeout: float = 30.0) -> list[str]:
    """Ray processes still alive after `timeout` (killed, and named for the report)."""
    deadline = time.monotonic() + timeout
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for processes to exit; nothing to wait on instead
    left = []
    for process in ray_processes():
        with contextlib.suppress(psutil.Error):
            left.append(f"{process.pid} {' '.join(process.cmdline())[:80]}")
            process.kill()
    return left


async def warm_up(runtimes: dict[str, Runtime]) -> None:
    for runtime in runtimes.values():
        await sequential(runtime, Series(), WARM_UP_CALLS)
        await concurrent(runtime, Series(), WARM_UP_CALLS)


async def measure(args: argparse.Namespace, work: Path) -> list[str]:
    nmap = install_fast_fakes(work / "fakes")["nmap"]
    began = time.perf_counter()
    myself = psutil.Process()
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(Runtime.start(config(nmap, None)))
        await warm_up({"local": local})
        await asyncio.sleep(IDLE_SEC)  # idle, as a daemon between calls
        alone = memory_of(myself)

        temp_dir = stack.enter_context(ray_environment(work))
        left: list[str] = []
        stack.callback(lambda: left.extend(wait_for_ray_to_exit()))
        cluster = LocalCluster.start(temp_dir, {"pool": POOL["resource"]})
        stack.callback(cluster.shutdown)
        section = {**cluster.cluster_section(POOL), "namespace": "labrecon-bench"}
        on_ray = stack.enter_context(Runtime.start(config(nmap, section)))
        runtimes = {"local": local, "ray": on_ray}
        await warm_up(runtimes)
        await asyncio.sleep(IDLE_SEC)
        joined = memory_of(myself)
        ray_idle = ray_memory(cluster)

        processes = [myself, *ray_processes()]
        figures = {
            "sequential": await alternate(runtimes, sequential, args.rounds, args.block, processes),
            f"{WIDTH}-way": await alternate(runtimes, concurrent, args.rounds, args.block * WIDTH, processes),
        }
    spent = time.perf_counter() - began
    return lines_of(args, figures, alone, joined, ray_idle, left, spent)


def lines_of(
    args: argparse.Namespace,
    figures: dict[str, dict[str, Series]],
    alone: tuple[int, int],
    joined: tuple[int, int],
    ray_idle: dict[str, dict[str, tuple[int, int, int]]],
    left: list[str],
    spent: float,
) -> list[str]:
    seq = figures["sequential"]
    added = (percentile(seq["ray"].latencies, 0.5) - percentile(seq["local"].latencies, 0.5)) * MS
    verdict = "meets" if added <= TARGET_ADDED_P50_MS else "MISSES"
    lines = [
        "a call on a Ray pool node (head + one pool node, loopback only) beside the same call run here,",
        "the fast fake nmap through Runtime.acall, blocks alternating between the two runtimes",
        f"calls per runtime: {args.rounds * args.block} sequential, {args.rounds * args.block * WIDTH} {WIDTH}-way"
        f" ({args.rounds} rounds); run took {spent:.0f}s",
        "",
        f"added by Ray at p50, sequential: {added:+.2f} ms (target <= {TARGET_ADDED_P50_MS:g} ms: {verdict})",
        "",
        f"{'series':<11} {'local p50':>9} {'p99':>7} {'ray p50':>8} {'p99':>7} {'added p50':>9} {'p99':>7}"
        f" {'ratio p50':>9} {'p99':>6}   CPU ms/call: {'local':>5} {'ray':>5}",
    ]
    for name, pair in figures.items():
        here, there = pair["local"].latencies, pair["ray"].latencies
        p50 = (percentile(here, 0.5), percentile(there, 0.5))
        p99 = (percentile(here, 0.99), percentile(there, 0.99))
        lines.append(
            f"{name:<11} {p50[0] * MS:>9.2f} {p99[0] * MS:>7.2f} {p50[1] * MS:>8.2f} {p99[1] * MS:>7.2f}"
            f" {(p50[1] - p50[0]) * MS:>+9.2f} {(p99[1] - p99[0]) * MS:>+7.2f}"
            f" {p50[1] / p50[0]:>8.2f}x {p99[1] / p99[0]:>5.2f}x"
            f"   {'':>12} {pair['local'].cpu_per_call * MS:>5.2f} {pair['ray'].cpu_per_call * MS:>5.2f}"
        )
    lines.append("(CPU: this process, Ray's processes and the fakes they ran, over each runtime's blocks)")
    lines += [
        "",
        f"idle memory after warm-up (MiB)   {'procs':>5} {'RSS':>7} {'PSS':>7}",
        f"{'labrecon, before Ray is imported':<33} {1:>5} {alone[0] / MIB:>7.1f} {alone[1] / MIB:>7.1f}",
        f"{'labrecon, joined to the cluster':<33} {1:>5} {joined[0] / MIB:>7.1f} {joined[1] / MIB:>7.1f}",
    ]
    for kind, (count, rss, pss) in ray_idle["kind"].items():
        lines.append(f"  {kind[:31]:<32} {count:>5} {rss / MIB:>7.1f} {pss / MIB:>7.1f}")
    for node, (count, rss, pss) in ray_idle["node"].items():
        lines.append(f"{'ray, ' + node + ' node':<33} {count:>5} {rss / MIB:>7.1f} {pss / MIB:>7.1f}")
    total = [sum(entry[i] for entry in ray_idle["node"].values()) for i in range(3)]
    lines.append(f"{'ray, all':<33} {total[0]:>5} {total[1] / MIB:>7.1f} {total[2] / MIB:>7.1f}")
    failures = [message for pair in figures.values() for s in pair.values() for message in s.failures]
    lines.append("")
    lines.append(f"failed calls: {len(failures)}" + "".join(f"\n  {m}" for m in sorted(set(failures))[:5]))
    if left:
        lines.append("Ray processes left after shutdown (killed): " + "; ".join(left))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="blocks per runtime in each series")
    parser.add_argument("--block", type=int, default=20, help=f"calls per block (x{WIDTH} in the {WIDTH}-way series)")
    parser.add_argument("--out", default="bench/results/ray_pools.txt")
    args = parser.parse_args()
    if not inside_loopback_namespace():
        sys.exit(f"Ray must run only where loopback is the one interface; run this as:\n  {HOW_TO_RUN}")
    with tempfile.TemporaryDirectory(prefix="labrecon-bench-") as work:
        report(asyncio.run(measure(args, Path(work))), args.out)


if __name__ == "__main__":
    main()
