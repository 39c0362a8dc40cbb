"""Supervision benchmark: restart latency, crash-storm throughput, memory over many calls.

    .venv/bin/python bench/supervision.py [--out bench/results/supervision.txt]

1. Restart latency, backoff 0: a crash is injected, two calls go in together;
   the first crashes the actor, the second waits in the stash and is the new
   incarnation's first call. The supervisor measures death seen -> successor
   starting that call; p50 and p99 over 200 crashes.
2. The 600-call storm (200 per tool, a crash every 10th nmap call) against
   the same workload with no faults, in the same run: throughput ratio.
3. RSS after 1,000 and after 10,000 calls: growth.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import report
from supervisor import Runtime

TARGETS = {
    "nmap": {"target": "10.0.0.5"},
    "masscan": {"target": "10.0.0.5", "ports": "80"},
    "gobuster": {"target": "10.0.0.5"},
}


def config(binaries: dict[str, str], **supervisor: object) -> dict:
    return {
        "policy": {"dns": False},
        "tools": {name: {"binary": path, "concurrency": 4, "max_queue": 1000} for name, path in binaries.items()},
        "supervisor": {"backoff_initial_sec": 0, "max_restarts": 100_000, "stash_limit": 1000, **supervisor},
    }


def restart_latency(binaries: dict[str, str], crashes: int) -> tuple[float, float, int]:
    cfg = config(binaries)
    cfg["tools"]["nmap"]["concurrency"] = 1
    with Runtime.start(cfg) as runtime:

        async def one_crash() -> None:
            runtime.inject(tool="nmap", kind="crash", count=1)
            first, second = await asyncio.gather(
                runtime.acall("nmap", TARGETS["nmap"]), runtime.acall("nmap", TARGETS["nmap"])
            )
            assert first.error_type == "actor_restarted" and second.ok, (first.error, second.error)

        async def all_crashes() -> None:
            for _ in range(crashes):
                await one_crash()

        asyncio.run(all_crashes())
        status = runtime.status().tools["nmap"]
        return status.restart_p50_sec, status.restart_p99_sec, status.restarts


def storm(binaries: dict[str, str], *, faults: bool) -> tuple[float, dict[str, int]]:
    cfg = config(binaries)
    if faults:
        cfg["faults"] = [{"tool": "nmap", "kind": "crash", "every": 10}]
    with Runtime.start(cfg) as runtime:

        async def run() -> list:
            tools = ("nmap", "masscan", "gobuster")
            return await asyncio.gather(*(runtime.acall(tools[i % 3], TARGETS[tools[i % 3]]) for i in range(600)))

        started = time.perf_counter()
        outcomes = asyncio.run(run())
        elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for o in outcomes:
        key = "ok" if o.ok else o.error_type.value
        counts[key] = counts.get(key, 0) + 1
    return 600 / elapsed, counts


def memory_growth(binaries: dict[str, str]) -> tuple[float, float]:
    process = psutil.Process()
    with Runtime.start(config(binaries)) as runtime:

        async def batch(n: int) -> None:
            for start in range(0, n, 100):
                await asyncio.gather(*(runtime.acall("nmap", TARGETS["nmap"]) for _ in range(min(100, n - start))))

        asyncio.run(batch(1_000))
        after_1k = process.memory_info().rss
        asyncio.run(batch(9_000))
        after_10k = process.memory_info().rss
    return after_1k / 2**20, after_10k / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/supervision.txt")
    parser.add_argument("--crashes", type=int, default=200)
    args = parser.parse_args()
    binaries = install_fast_fakes(Path(tempfile.mkdtemp()) / "fakes")
    lines = []

    p50, p99, restarts = restart_latency(binaries, args.crashes)
    lines.append(f"restart latency over {restarts} crashes (backoff 0): p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")

    calm, calm_counts = storm(binaries, faults=False)
    stormy, storm_counts = storm(binaries, faults=True)
    lines.append(f"600-call workload without faults: {calm:.0f} calls/s {calm_counts}")
    lines.append(f"600-call crash storm (every 10th nmap call): {stormy:.0f} calls/s {storm_counts}")
    lines.append(f"crash storm throughput / no-fault throughput: {stormy / calm:.2f}")

    rss_1k, rss_10k = memory_growth(binaries)
    lines.append(
        f"RSS after 1,000 calls {rss_1k:.1f} MB, after 10,000 calls {rss_10k:.1f} MB: growth {rss_10k - rss_1k:+.1f} MB"
    )

    report(lines, args.out)


if __name__ == "__main__":
    main()
