"""Scan store benchmark: what keeping every call as a scan costs a stdio call, and how fast a page of 10 000 reads.

    .venv/bin/python bench/scan_store.py [--calls 1000] [--scans 10000] [--pages 300]
        [--compare NAME=COMMAND ...] [--out bench/results/scans.txt]

Round trip: the fast fake nmap (bench/fast_fakes.py) called over stdio, interleaved call by call, by a
raw spawn (the floor), this checkout with `[scans] path` on disk, the same with `":memory:"`, and every
labrecon named with `--compare` (an older checkout: it gets no `[scans]` section, and a store, if it
has one, goes to its default place under a temporary XDG_STATE_HOME). Figures: p50 and p99 per
server, and what each adds over the raw spawn and over each compared build.

Page: `Scans.page` of one owner's newest 50, and a page deep in via its cursor, with `--scans` finished
scans stored on disk; then `scans_list` and `tasks/list` (a page of 50 each) over stdio from a server on
that store, round trip included; p50 and p99 of `--pages` reads each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.api import Caller
from actors.results import CallOutcome
from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from bench.stdio_floor_servers import ARGV_TAIL
from bench.stdio_roundtrip import WARM_UP_CALLS, StdioServer, raw_spawn, rotated
from bench.variants import LABRECON, add_compare_option
from supervisor.scans.records import ScanRecord, ScanStatus, new_scan_id
from supervisor.scans.service import Scans
from supervisor.scans.store import ScanStore

RAW = "raw spawn"
DISK = "store on disk"
MEMORY = "store :memory:"
ADDED_TARGET_MS = 0.15
PAGE_TARGET_MS = 5.0


def config_text(fakes: dict[str, str], scans_path: str | None) -> str:
    text = "[policy]\ndns = false\n" + "".join(f'[tools.{tool}]\nbinary = "{path}"\n' for tool, path in fakes.items())
    return text + (f'[scans]\npath = "{scans_path}"\n' if scans_path is not None else "")


def round_trips(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    fakes = install_fast_fakes(work / "fakes")
    os.environ["XDG_STATE_HOME"] = str(work / "state")  # where a compared build without [scans] keeps its store
    commands: dict[str, list[str]] = {}
    for name, file, store in ((DISK, "disk.toml", str(work / "scans.sqlite3")), (MEMORY, "memory.toml", ":memory:")):
        (work / file).write_text(config_text(fakes, store))
        commands[name] = [*LABRECON, "serve", "--config", str(work / file)]
    (work / "compared.toml").write_text(config_text(fakes, None))
    for name, argv in args.compare:
        commands[name] = [*argv, "serve", "--config", str(work / "compared.toml")]

    servers = {name: StdioServer(argv) for name, argv in commands.items()}
    try:
        for server in servers.values():
            server.initialize()
            for i in range(WARM_UP_CALLS):
                server.call_inline(10_000 + i)
        calls: dict[str, Callable[[int], float]] = {RAW: raw_spawn([fakes["nmap"], *ARGV_TAIL])}
        calls |= {name: server.call_inline for name, server in servers.items()}
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(args.calls):
            for name in rotated(list(calls), i):
                latencies[name].append(calls[name](i + 1))
    finally:
        for server in servers.values():
            server.close()
    return latencies


def filled_store(path: Path, count: int) -> Scans:
    """`count` finished nmap scans of the local user, a second apart, as the service would leave them."""
    store = ScanStore(path)
    scans = Scans(store, cancel_call=lambda _: False, retention_sec=1e12, max_scans=count)
    owner = Caller.local().owner
    outcome = CallOutcome(tool="nmap", call_id="c", ok=True, target="10.0.0.5", resolved_targets=["10.0.0.5"],
                          argv=["nmap", "10.0.0.5"], returncode=0, duration_sec=1.0, result={"hosts": []})
    start = time.time() - count  # recent: a server on this store keeps them all (retention is days)
    for n in range(count):
        record = ScanRecord(
            scan_id=new_scan_id(), owner=owner, tool="nmap", call_id=f"c{n}", status=ScanStatus.WORKING,
            created_at=start + n, updated_at=start + n, arguments={"target": "10.0.0.5"}, target="10.0.0.5",
            resolved_targets=("10.0.0.5",), argv=("nmap", "10.0.0.5"),
        )
        store.add(record)
        store.finish(record.scan_id, outcome, at=start + n, progress=100.0, progress_message=None)
    return scans


def page_times(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    """`Scans.page` in-process, then `scans_list` and `tasks/list` over stdio from a server on the same store."""
    scans = filled_store(work / "pages.sqlite3", args.scans)
    me = Caller.local()
    cursor: str | None = None
    for _ in range(args.scans // 2 // 50):  # a cursor half way down
        _, cursor = scans.page(me, cursor=cursor)
    reads = {"first page (50)": None, "page half way down": cursor}
    times: dict[str, list[float]] = {name: [] for name in reads}
    for _ in range(args.pages):
        for name, at in reads.items():
            started = time.perf_counter()
            records, _ = scans.page(me, cursor=at)
            times[name].append(time.perf_counter() - started)
            assert len(records) == 50
    scans.store.close()
    (work / "pages.toml").write_text(config_text({}, str(work / "pages.sqlite3")))
    server = StdioServer([*LABRECON, "serve", "--config", str(work / "pages.toml")])
    try:
        server.initialize()
        over_mcp = {
            # scans_list stops short of 50 where max_result_chars (20 000) ends: 37 of these records.
            "scans_list over stdio": ("tools/call", {"name": "scans_list", "arguments": {"limit": 50}}),
            "tasks/list over stdio": ("tasks/list", {}),
        }
        for name, (method, params) in over_mcp.items():
            times[name] = []
            for i in range(args.pages):
                started = time.perf_counter()
                server.send({"jsonrpc": "2.0", "id": 100_000 + i, "method": method, "params": params})
                answer = server.read_answer(100_000 + i)
                times[name].append(time.perf_counter() - started)
                result = answer["result"]
                assert result.get("tasks") or result["structuredContent"]["scans"], answer.get("error")
    finally:
        server.close()
    return times


def render(args: argparse.Namespace, latencies: dict[str, list[float]], pages: dict[str, list[float]]) -> list[str]:
    def p(values: list[float], q: float) -> float:
        return percentile(values, q) * 1e3

    raw50, raw99 = p(latencies[RAW], 0.5), p(latencies[RAW], 0.99)
    compared = [name for name in latencies if name not in (RAW, DISK, MEMORY)]
    lines = [
        f"calls per series: {args.calls} sequential (interleaved one by one); {args.scans} stored scans, "
        f"{args.pages} reads per page",
        "",
        "what the store adds per call (ms; target <= 0.15 at p50):",
    ]
    for base in [MEMORY, *compared]:
        for name in (DISK, MEMORY):
            if name == base:
                continue
            added50 = p(latencies[name], 0.5) - p(latencies[base], 0.5)
            added99 = p(latencies[name], 0.99) - p(latencies[base], 0.99)
            verdict = "meets" if added50 <= ADDED_TARGET_MS else "MISSES"
            lines.append(f"  {name + ' over ' + base + ':':<44} p50 {added50:+7.3f}  p99 {added99:+7.3f}  ({verdict})")
    lines += ["", f"{'server':<22} {'p50 ms':>8} {'p99 ms':>8} {'over raw p50':>13} {'over raw p99':>13}"]
    for name, values in latencies.items():
        lines.append(f"{name:<22} {p(values, 0.5):>8.3f} {p(values, 0.99):>8.3f} "
                     f"{p(values, 0.5) - raw50:>+13.3f} {p(values, 0.99) - raw99:>+13.3f}")
    lines += ["", f"a page of 50 with {args.scans} stored scans (ms; target <= {PAGE_TARGET_MS} at p50):"]
    for name, values in pages.items():
        verdict = "meets" if p(values, 0.5) <= PAGE_TARGET_MS else "MISSES"
        lines.append(f"  {name + ':':<24} p50 {p(values, 0.5):7.3f}  p99 {p(values, 0.99):7.3f}  ({verdict})")
    lines += ["", "compared:"] + [f"  {name}: {' '.join(argv)}" for name, argv in args.compare]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per server")
    parser.add_argument("--scans", type=int, default=10_000, help="scans stored for the page reads")
    parser.add_argument("--pages", type=int, default=300, help="reads of each page")
    add_compare_option(parser)
    parser.add_argument("--out", default="bench/results/scans.txt")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labrecon-scans-bench-") as work:
        pages = page_times(args, Path(work))
        latencies = round_trips(args, Path(work))
    lines = render(args, latencies, pages)
    lines.insert(1, f"run took {time.perf_counter() - started:.0f}s")
    report(lines, args.out)


if __name__ == "__main__":
    main()
