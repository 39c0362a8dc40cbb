"""stdio benchmark: labrecon beside the official SDK's `MCPServer` and a raw spawn of the same fake tool.

    .venv/bin/python bench/stdio_roundtrip.py [--calls 1000] [--concurrent-calls 2000] [--rounds 4]
        [--compare NAME=COMMAND ...] [--out bench/results/stdio.txt]

In one run, the same fast fake nmap (bench/fast_fakes.py) is called by:

- a raw spawn from Python with captured output, the baseline;
- `labrecon serve` over stdio, and every labrecon named with `--compare`
  (another checkout's, or this one with orjson: bench/variants.py);
- the SDK's `MCPServer` with one tool that spawns the fake and returns its
  stdout (bench/sdk_stdio_server.py);
- two bare servers that only spawn it (bench/stdio_floor_servers.py), to show
  what any stdio server pays before labrecon does work of its own.

Figures: the p50 round trip of sequential calls (interleaved, one call to
each in turn, so machine noise hits them alike) and what it adds over the raw
spawn; throughput with 8 calls in flight, in `--rounds` interleaved chunks
(raw spawning 8-way is 8 threads spawning); start to the `initialize` answer;
RSS once started, initialized and warmed up by 20 calls, idle. Raw JSON-RPC
lines are written and read; the headline ratios come first in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from bench.stdio_floor_servers import ARGV_TAIL
from bench.variants import OWN, REFERENCE, add_compare_option, variants

HERE = Path(__file__).resolve().parent
RAW = "raw spawn"
WIDTH = 8
WARM_UP_CALLS = 20
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
TARGETS = (  # what a figure must reach, as labrecon / SDK
    ("added latency at p50", "<=", 0.5),
    (f"{WIDTH}-way throughput", ">=", 1.5),
    ("start to initialize answer", "<=", 0.6),
    ("idle RSS", "<=", 1.0),
)


class StdioServer:
    """One MCP server over stdio, spoken to in raw JSON-RPC lines; answers are read inline or by a reader thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.waiters: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.stdin.write(json.dumps(message).encode() + b"\n")
            self.stdin.flush()

    def read_answer(self, call_id: int) -> dict[str, Any]:
        """The answer to `call_id`, read on this thread; notifications before it are skipped."""
        while line := self.stdout.readline():
            message: dict[str, Any] = json.loads(line)
            if message.get("id") == call_id:
                return message
        raise RuntimeError(f"the server closed stdout before answering {call_id}")

    def initialize(self) -> None:
        self.send(INIT)
        assert "result" in self.read_answer(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call_inline(self, call_id: int) -> float:
        """One call with the answer read on this thread: no client-side thread hop in the measurement."""
        started = time.perf_counter()
        self.send(request(call_id))
        answer = self.read_answer(call_id)
        elapsed = time.perf_counter() - started
        check(answer)
        return elapsed

    def start_reader(self) -> None:
        """From now on answers are read by a thread and handed to `call`: for calls in flight together."""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stdout:
            message = json.loads(line)
            waiter = self.waiters.pop(message.get("id"), None)
            if waiter:
                waiter[1].append(message)
                waiter[0].set()

    def call(self, call_id: int) -> float:
        done: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
        self.waiters[call_id] = done
        started = time.perf_counter()
        self.send(request(call_id))
        done[0].wait()
        elapsed = time.perf_counter() - started
        check(done[1][0])
        return elapsed

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)
        self.stdout.close()


def request(call_id: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {"name": "nmap", "arguments": {"target": "10.0.0.5", "ports": "22"}},
    }


def check(answer: dict[str, Any]) -> None:
    assert "result" in answer and not answer["result"].get("isError"), answer


def raw_spawn(argv: list[str]) -> Callable[[int], float]:
    def call(_call_id: int) -> float:
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started

    return call


def startup_time(argv: list[str]) -> float:
    started = time.perf_counter()
    server = StdioServer(argv)
    server.send(INIT)
    answer = server.read_answer(0)
    elapsed = time.perf_counter() - started
    assert "result" in answer, answer
    server.close()
    return elapsed


def closed_loop(call: Callable[[int], float], ids: Iterator[int], calls: int, width: int) -> tuple[list[float], float]:
    """`calls` calls, `width` at a time, each worker starting its next as its last returns: latencies and wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    left = calls

    def worker() -> None:
        nonlocal left
        while True:
            with lock:
                if left == 0:
                    return
                left -= 1
                call_id = next(ids)
            elapsed = call(call_id)
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(width)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


def rotated(names: list[str], by: int) -> list[str]:
    by %= len(names)
    return names[by:] + names[:by]


@dataclass
class Figures:
    sequential: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    concurrent_wall: float = 0.0
    startups: list[float] = field(default_factory=list)
    rss: int = 0

    @property
    def p50(self) -> float:
        return statistics.median(self.sequential)

    @property
    def rate(self) -> float:
        return len(self.concurrent) / self.concurrent_wall


def measure(args: argparse.Namespace, work: Path) -> tuple[dict[str, Figures], dict[str, list[str]]]:
    fakes = install_fast_fakes(work / "fakes")
    os.environ["XDG_STATE_HOME"] = str(work / "state")  # each run's scans in a store of its own
    config = work / "labrecon.toml"
    config.write_text(
        "[policy]\ndns = false\n"
        + "".join(
            f'[tools.{tool}]\nbinary = "{path}"\nconcurrency = 8\nmax_queue = 64\n' for tool, path in fakes.items()
        )
    )
    commands = {name: [*argv, "serve", "--config", str(config)] for name, argv in variants(args.compare).items()}
    commands[REFERENCE] = [sys.executable, str(HERE / "sdk_stdio_server.py"), fakes["nmap"]]
    floors = {
        f"bare {mode}": [sys.executable, str(HERE / "stdio_floor_servers.py"), mode, fakes["nmap"]]
        for mode in ("blocking", "loop-and-thread")
    }
    figures = {name: Figures() for name in [RAW, *commands, *floors]}

    for round_no in range(args.startups):
        for name in rotated(list(commands), round_no):
            figures[name].startups.append(startup_time(commands[name]))

    servers = {name: StdioServer(argv) for name, argv in {**commands, **floors}.items()}
    try:
        for name, server in servers.items():
            server.initialize()
            for i in range(WARM_UP_CALLS):  # imports, first spawns
                server.call_inline(10_000 + i)
            figures[name].rss = server.rss()

        calls: dict[str, Callable[[int], float]] = {RAW: raw_spawn([fakes["nmap"], *ARGV_TAIL])}
        calls |= {name: server.call_inline for name, server in servers.items()}
        for i in range(args.calls):
            for name in rotated(list(calls), i):
                figures[name].sequential.append(calls[name](i + 1))

        for floor in floors:
            servers.pop(floor).close()
        for server in servers.values():
            server.start_reader()
        calls = {RAW: calls[RAW]} | {name: server.call for name, server in servers.items()}
        ids = iter(range(100_000, 10_000_000))
        for round_no in range(args.rounds):
            chunk = args.concurrent_calls // args.rounds + (round_no < args.concurrent_calls % args.rounds)
            for name in rotated(list(calls), round_no):
                latencies, wall = closed_loop(calls[name], ids, chunk, WIDTH)
                figures[name].concurrent += latencies
                figures[name].concurrent_wall += wall
    finally:
        for server in servers.values():
            server.close()
    return figures, commands


def ratio_line(label: str, ours: float, theirs: float, unit: str, op: str, target: float) -> str:
    ratio = ours / theirs
    met = ratio <= target if op == "<=" else ratio >= target
    return (
        f"  {label + ':':<40} {ours:9.3f} vs {theirs:9.3f} {unit:<8} = {ratio:5.2f}x  "
        f"(target {op} {target}x: {'meets' if met else 'MISSES'})"
    )


def headline(figures: dict[str, Figures]) -> dict[str, dict[str, tuple[float, str, bool]]]:
    """Each compared figure of a server: value, unit, and whether a higher value is better."""
    raw_p50 = figures[RAW].p50
    return {
        name: {
            "p50 round trip": (f.p50 * 1e3, "ms", False),
            "added latency at p50": ((f.p50 - raw_p50) * 1e3, "ms", False),
            "p95 round trip": (percentile(f.sequential, 0.95) * 1e3, "ms", False),
            f"{WIDTH}-way throughput": (f.rate, "calls/s", True),
            "start to initialize answer": (statistics.median(f.startups) * 1e3, "ms", False),
            "idle RSS": (f.rss / 2**20, "MiB", False),
        }
        for name, f in figures.items()
        if f.startups
    }


def render(figures: dict[str, Figures], commands: dict[str, list[str]], args: argparse.Namespace) -> list[str]:
    values = headline(figures)
    ours, sdk = values[OWN], values[REFERENCE]
    raw = figures[RAW]
    lines = [
        f"calls per series: {args.calls} sequential (interleaved one by one), {args.concurrent_calls} {WIDTH}-way "
        f"(in {args.rounds} interleaved rounds), {args.startups} start-ups per server",
        "",
        "labrecon / SDK MCPServer over stdio, same run:",
    ]
    lines += [
        ratio_line(label, ours[label][0], sdk[label][0], ours[label][1], op, target) for label, op, target in TARGETS
    ]
    lines.append(
        ratio_line(
            f"{WIDTH}-way throughput / raw spawning {WIDTH}-way", figures[OWN].rate, raw.rate, "calls/s", ">=", 0.8
        )
    )
    for name in commands:
        if name in (OWN, REFERENCE):
            continue
        lines += ["", f"this checkout's labrecon against {name!r} (no figure worse by more than 10%):"]
        for label, (value, unit, higher_is_better) in ours.items():
            other = values[name][label][0]
            worse = (other - value) / other if higher_is_better else (value - other) / abs(other)
            verdict = f"{'worse' if worse > 0 else 'better'} by {abs(worse) * 100:4.1f}%"
            lines.append(
                f"  {label + ':':<40} {value:9.3f} vs {other:9.3f} {unit:<8} {verdict}"
                + ("  <-- more than 10% worse" if worse > 0.10 else "")
            )
    lines += [
        "",
        f"{'server':<22} {'seq p50 ms':>10} {'seq p95 ms':>10} {'added ms':>9} {WIDTH}-way p50 ms "
        f"{WIDTH}-way calls/s {'start p50 ms':>12} {'start max':>9} {'idle RSS MiB':>12}",
    ]
    for name, f in figures.items():
        conc = (
            f"{statistics.median(f.concurrent) * 1e3:>12.3f} {f.rate:>14.0f}" if f.concurrent else f"{'':>12} {'':>14}"
        )
        start = (
            f"{statistics.median(f.startups) * 1e3:>12.0f} {max(f.startups) * 1e3:>9.0f} {f.rss / 2**20:>12.1f}"
            if f.startups
            else ""
        )
        lines.append(
            f"{name:<22} {f.p50 * 1e3:>10.3f} {percentile(f.sequential, 0.95) * 1e3:>10.3f} "
            f"{(f.p50 - raw.p50) * 1e3:>+9.3f} {conc} {start}".rstrip()
        )
    lines.append(
        f"labrecon's own work over the bare loop-and-thread server: "
        f"{(figures[OWN].p50 - figures['bare loop-and-thread'].p50) * 1e3:+.3f} ms at p50"
    )
    lines += ["", "commands:"] + [f"  {name}: {' '.join(argv)}" for name, argv in commands.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per server")
    parser.add_argument("--concurrent-calls", type=int, default=2000, help=f"{WIDTH}-way calls per server")
    parser.add_argument("--rounds", type=int, default=4, help=f"interleaved chunks of the {WIDTH}-way series")
    parser.add_argument("--startups", type=int, default=10, help="start-ups per server")
    add_compare_option(parser)
    parser.add_argument("--out", default="bench/results/stdio.txt")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labrecon-stdio-bench-") as work:
        figures, commands = measure(args, Path(work))
    lines = render(figures, commands, args)
    lines.insert(1, f"run took {time.perf_counter() - started:.0f}s")
    report(lines, args.out)


if __name__ == "__main__":
    main()
