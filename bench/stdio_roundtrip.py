"""stdio benchmark: what labrecon adds to a tool call, and how fast it answers `initialize`.

    .venv/bin/python bench/stdio_roundtrip.py [--calls 300] [--out bench/results/stdio.txt]

In one run: the same fast fake nmap is (a) spawned directly from Python with
captured output, the baseline, and (b) called through `labrecon serve` over
stdio with raw JSON-RPC lines, sequentially and 8 calls in flight. The
figure of merit is the p50 round trip minus the p50 raw spawn. Start-up is
the time from starting `labrecon serve` to reading its `initialize` answer.

Two bare servers (bench/stdio_floor_servers.py) are called in the same
rounds, to show how much of the added latency any stdio server pays (one
that only spawns the tool) and how much an asyncio loop handing each call
to a worker thread pays, before labrecon does any work of its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes  # noqa: E402
from bench.report import percentile, report  # noqa: E402
from bench.stdio_floor_servers import ARGV_TAIL  # noqa: E402

LABRECON = str(Path(sys.executable).with_name("labrecon"))
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}


FLOOR_SERVERS = str(Path(__file__).resolve().parent / "stdio_floor_servers.py")


class Server:
    def __init__(self, config: Path | None = None, argv: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv or [LABRECON, "serve", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.waiters: dict[int, tuple[threading.Event, list]] = {}
        self.lock = threading.Lock()

    def send(self, message: dict) -> None:
        with self.lock:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()

    def read_one(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def start_reader(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            waiter = self.waiters.pop(message.get("id"), None)
            if waiter:
                waiter[1].append(message)
                waiter[0].set()

    def call_inline(self, call_id: int) -> float:
        """One call with the answer read on this thread: no client-side thread hop in the measurement."""
        started = time.perf_counter()
        self.send(self._request(call_id))
        answer = self.read_one()
        elapsed = time.perf_counter() - started
        assert answer["id"] == call_id and not answer["result"]["isError"], answer
        return elapsed

    @staticmethod
    def _request(call_id: int) -> dict:
        return {
            "jsonrpc": "2.0",
            "id": call_id,
            "method": "tools/call",
            "params": {"name": "nmap", "arguments": {"target": "10.0.0.5", "ports": "22"}},
        }

    def call(self, call_id: int) -> float:
        done: tuple[threading.Event, list] = (threading.Event(), [])
        self.waiters[call_id] = done
        started = time.perf_counter()
        self.send(self._request(call_id))
        done[0].wait()
        elapsed = time.perf_counter() - started
        assert not done[1][0]["result"]["isError"], done[1][0]
        return elapsed

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def startup_time(config: Path) -> float:
    started = time.perf_counter()
    server = Server(config)
    server.send(INIT)
    answer = server.read_one()
    elapsed = time.perf_counter() - started
    assert answer["id"] == 0 and "result" in answer
    server.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", default="bench/results/stdio.txt")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    fakes = install_fast_fakes(work / "fakes")
    config = work / "labrecon.toml"
    config.write_text(
        "[policy]\ndns = false\n"
        + "".join(f'[tools.{tool}]\nbinary = "{path}"\nconcurrency = 8\nmax_queue = 64\n' for tool, path in fakes.items())
    )

    startups = [startup_time(config) for _ in range(10)]

    server = Server(config)
    server.send(INIT)
    server.read_one()
    server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for i in range(20):  # warm up: imports, first spawns
        server.call_inline(10_000 + i)

    floors = {mode: Server(argv=[sys.executable, FLOOR_SERVERS, mode, fakes["nmap"]]) for mode in ("blocking", "loop-and-thread")}
    floor_times: dict[str, list[float]] = {mode: [] for mode in floors}
    for floor in floors.values():
        for i in range(20):
            floor.call_inline(10_000 + i)

    # Interleave baseline, bare servers and labrecon so machine noise hits them alike.
    raw, sequential = [], []
    argv = [fakes["nmap"], *ARGV_TAIL]
    for i in range(args.calls):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=True)
        raw.append(time.perf_counter() - t)
        sequential.append(server.call_inline(i + 1))
        for mode, floor in floors.items():
            floor_times[mode].append(floor.call_inline(i + 1))
    for floor in floors.values():
        floor.close()

    server.start_reader()

    concurrent: list[float] = []
    started = time.perf_counter()
    ids = iter(range(100_000, 100_000 + args.calls))
    ids_lock = threading.Lock()

    def worker() -> None:
        while True:
            with ids_lock:
                call_id = next(ids, None)
            if call_id is None:
                return
            concurrent.append(server.call(call_id))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server.close()

    raw_p50, seq_p50 = statistics.median(raw), statistics.median(sequential)
    floor_p50 = {mode: statistics.median(times) for mode, times in floor_times.items()}
    lines = [
        f"calls per series: {args.calls}",
        f"raw spawn from Python (baseline): p50 {raw_p50 * 1e3:.3f} ms, p95 {percentile(raw, 0.95) * 1e3:.3f} ms",
        f"labrecon stdio sequential:        p50 {seq_p50 * 1e3:.3f} ms, p95 {percentile(sequential, 0.95) * 1e3:.3f} ms",
        f"added latency at p50: {(seq_p50 - raw_p50) * 1e3:+.3f} ms (ratio {seq_p50 / raw_p50:.2f}x)",
        *(
            f"  bare server, {mode + ':':17s}p50 {p50 * 1e3:.3f} ms, added {(p50 - raw_p50) * 1e3:+.3f} ms"
            for mode, p50 in floor_p50.items()
        ),
        f"  labrecon's own work, over the loop-and-thread server: {(seq_p50 - floor_p50['loop-and-thread']) * 1e3:+.3f} ms",
        f"labrecon stdio 8-way: p50 {statistics.median(concurrent) * 1e3:.3f} ms, "
        f"{len(concurrent) / wall:.0f} calls/s ({len(concurrent) / wall * raw_p50:.2f}x one raw spawner)",
        f"start to initialize answer: p50 {statistics.median(startups) * 1e3:.0f} ms, max {max(startups) * 1e3:.0f} ms",
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
