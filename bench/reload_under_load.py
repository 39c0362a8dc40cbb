"""Reload benchmark: how long a reload takes to apply under a steady load, and what it does to that load.

    .venv/bin/python bench/reload_under_load.py [--workers 8] [--seconds 6] [--reloads 30] [--interval 0.2]
        [--out bench/results/reload.txt]

Eight workers call the fast fake nmap (bench/fast_fakes.py) back to back through the embedding API
(`Runtime.acall`), the way every transport reaches the runtime. First the load runs alone for
`--seconds` (before); then it runs while `--reloads` reloads come every `--interval` seconds, each
changing the policy, nmap's concurrency (a message to its actor) and gobuster's binary (a new
incarnation), and once in three nmap's binary too (during). Figures: each reload's time to apply (p50, max), the load's
p50/p99 latency and throughput before and during, and every call's answer (none may fail).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from supervisor import Runtime

CALL = {"target": "10.0.0.5", "ports": "22"}


def base_config(fakes: dict[str, str], state: Path) -> dict[str, Any]:
    return {
        "policy": {"dns": False, "allowed_networks": ["10.0.0.0/8"]},
        "tools": {tool: {"binary": path, "concurrency": 8, "max_queue": 64} for tool, path in fakes.items()},
        "scans": {"path": str(state / "scans.sqlite3")},
        "reload": {"drain_sec": 30},
    }


def variant(config: dict[str, Any], fakes: list[dict[str, str]], index: int) -> dict[str, Any]:
    """The `index`th reload's config: another policy, concurrency and gobuster binary; nmap's every third."""
    new = copy.deepcopy(config)
    new["policy"]["allowed_networks"] = ["10.0.0.0/8"] + (["192.168.56.0/24"] if index % 2 else [])
    new["tools"]["nmap"]["concurrency"] = 6 + index % 3
    new["tools"]["gobuster"]["binary"] = fakes[index % 2]["gobuster"]
    if index % 3 == 0:
        new["tools"]["nmap"]["binary"] = fakes[index % 2]["nmap"]
    return new


async def load(runtime: Runtime, workers: int, until: asyncio.Event) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        while not until.is_set():
            started = time.perf_counter()
            outcome = await runtime.acall("nmap", CALL)
            latencies.append(time.perf_counter() - started)
            if not outcome.ok:
                failures.append(outcome.error.message if outcome.error else "not ok")

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies, failures


async def measure(args: argparse.Namespace, work: Path) -> list[str]:
    fakes = [install_fast_fakes(work / "a"), install_fast_fakes(work / "b")]
    config = base_config(fakes[0], work)
    with Runtime.start(config) as runtime:
        for _ in range(50):  # warm up: threads, caches, the store
            await runtime.acall("nmap", CALL)
        stop = asyncio.Event()
        running = asyncio.create_task(load(runtime, args.workers, stop))
        await asyncio.sleep(args.seconds)  # a benchmark's measuring window, not synchronisation
        stop.set()
        before, before_failures = await running
        before_rate = len(before) / args.seconds

        stop = asyncio.Event()
        running = asyncio.create_task(load(runtime, args.workers, stop))
        applied: list[float] = []
        began = time.perf_counter()
        for index in range(args.reloads):
            started = time.perf_counter()
            await asyncio.to_thread(runtime.reload, variant(config, fakes, index + 1), by="bench")
            applied.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, started + args.interval - time.perf_counter()))  # the next one's time
        spent = time.perf_counter() - began
        stop.set()
        during, during_failures = await running
        during_rate = len(during) / spent

    ms = 1000.0
    return [
        f"reload under load: {args.workers} workers calling the fast fake nmap through Runtime.acall",
        f"a reload every {args.interval:g}s changes the policy, nmap's concurrency and gobuster's binary;"
        " nmap's binary every third",
        "",
        f"reloads applied: {len(applied)}; time to apply p50 {percentile(applied, 0.5) * ms:.2f} ms, "
        f"max {max(applied) * ms:.2f} ms",
        "",
        f"{'load':<8} {'calls':>7} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}",
        f"{'before':<8} {len(before):>7} {before_rate:>8.0f} {percentile(before, 0.5) * ms:>8.2f} "
        f"{percentile(before, 0.99) * ms:>8.2f} {len(before_failures):>7}",
        f"{'during':<8} {len(during):>7} {during_rate:>8.0f} {percentile(during, 0.5) * ms:>8.2f} "
        f"{percentile(during, 0.99) * ms:>8.2f} {len(during_failures):>7}",
        "",
        f"p99 during / before: {percentile(during, 0.99) / percentile(before, 0.99):.2f}x",
        *(f"failed: {message}" for message in sorted(set(before_failures + during_failures))[:5]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the load runs alone first")
    parser.add_argument("--reloads", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds from one reload's start to the next")
    parser.add_argument("--out", default="bench/results/reload.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labrecon-bench-") as work:
        report(asyncio.run(measure(args, Path(work))), args.out)


if __name__ == "__main__":
    main()
