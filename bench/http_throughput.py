"""HTTP benchmark: server CPU per `tools/call` and round trips, labrecon's daemon against the official SDK's server.

    .venv/bin/python bench/http_throughput.py [--calls 300] [--concurrent-calls 1600] [--width 16]
        [--rounds 4] [--transports sse,http,http-modern] [--shared-session] [--labrecon-log-level LEVEL]
        [--compare NAME=COMMAND ...] [--out bench/results/http.txt]

The servers run side by side, each in its own process, bound to 127.0.0.1
(every labrecon named with `--compare` beside this checkout's, bench/variants.py):

- labrecon: `labrecon serve --transport http --port 0` (the bound port is read
  off its listening socket with psutil, then /livez is awaited), config: policy dns=false,
  every tool a fast fake (bench/fast_fakes.py) with concurrency 16 and
  max_queue 256, logging at its default level, info (two JSON lines per call,
  to a file; `--labrecon-log-level warning` shows what that costs);
- the reference: bench/sdk_reference_server.py, an `MCPServer` from the
  official `mcp` SDK with an equivalent `nmap(target, ports)` tool (spawns the
  same fast fake with asyncio, captures it, parses the XML with defusedxml,
  returns structured content), its Streamable HTTP and SSE apps on one uvicorn.

All are driven by the same client code, the official SDK's `mcp.Client`,
over three transports:

- `sse`:         legacy HTTP+SSE (`GET /sse`, `POST /messages/`), initialize handshake;
- `http`:        Streamable HTTP (`/mcp`) with the initialize handshake and a session (2025-11-25);
- `http-modern`: Streamable HTTP negotiated by `Client(url)` itself (2026-07-28, no session).

For each, a sequential series (one session, one call at a time) and a
`--width`-way series: by default `--width` separate sessions (one `Client`
each, so separate connections), each calling in a closed loop until the
series' calls are done. Sessions are opened, and each makes one call, before
the clock starts: the SDK client's first `call_tool` on a session also lists
the tools and compiles the tool's output schema, a once-per-session client
cost reported on its own line. Separate sessions is the fairer choice: it is what
16 agents look like to a daemon, and it keeps one client session's own
dispatch from being the thing measured; `--shared-session` runs the width
as tasks on one session instead.

Noise is shared: each series is split into `--rounds` chunks, and the
servers' chunks of the same series run back to back, the order reversing
per round. Throughput is calls over summed wall time of a series' chunks;
p50/p99 are over every call's round trip. The headline, "srv CPU", is the
server process's own CPU time per call, user + system as /proc counts it
(psutil), without its reaped children's (the fake scanners, shown apart as
"spawned"); it is far less sensitive to a noisy machine than wall time, but
counted in clock ticks, so short series are coarse.
The client runs in this process and uses CPU too ("client CPU"): on a
machine with few cores it competes with the server, which narrows the ratios;
"cores busy" is server + spawned + client CPU over wall time, so a value
near the machine's core count means the series was CPU-bound.

Only 127.0.0.1 is bound or connected to, and the tools are the fast fakes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from mcp import Client
from mcp.client.sse import sse_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from bench.variants import OWN, REFERENCE, add_compare_option, variants

HERE = Path(__file__).resolve().parent
TRANSPORTS = ("sse", "http", "http-modern")
ARGUMENTS = {"target": "10.0.0.5", "ports": "22"}
TIMEOUT = 60.0
START_TIMEOUT = 30.0


# --- the servers ------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log_file, start_new_session=True
        )
        self.ps = psutil.Process(self.proc.pid)
        self.url = ""

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: the server process's own, and its reaped children's (the fake scanners)."""
        t = self.ps.cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()

    def died(self) -> None:
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before listening:\n{tail}")


def start_labrecon(name: str, command: list[str], config: Path, work: Path) -> ServerProcess:
    """`labrecon serve --port 0`; the bound port is read off its listening socket, whatever the log level."""
    server = ServerProcess(
        name,
        [*command, "serve", "--config", str(config), "--transport", "http", "--host", "127.0.0.1", "--port", "0"],
        work / f"{name}.log",
    )
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                server.died()
            listening = [
                c.laddr
                for c in server.ps.net_connections(kind="tcp4")
                if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"
            ]
            if listening:
                url = f"http://127.0.0.1:{listening[0].port}"
                if httpx.get(url + "/livez", timeout=START_TIMEOUT).status_code == 200:
                    server.url = url
                    return server
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start listening in time")
    except BaseException:
        server.stop()
        raise


def start_sdk(binary: str, work: Path) -> ServerProcess:
    server = ServerProcess(
        REFERENCE,
        [sys.executable, str(HERE / "sdk_reference_server.py"), "--binary", binary, "--port", "0"],
        work / "sdk.log",
    )
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        server.proc.wait(timeout=5)
        server.died()
    server.url = f"http://127.0.0.1:{int(line.split()[1])}"
    return server


# --- the client ---------------------------------------------------------------------------------


def client(kind: str, url: str) -> Client:
    if kind == "sse":
        return Client(sse_client(url + "/sse"), mode="legacy", read_timeout_seconds=TIMEOUT)
    if kind == "http":
        return Client(url + "/mcp", mode="legacy", read_timeout_seconds=TIMEOUT)
    return Client(url + "/mcp", read_timeout_seconds=TIMEOUT)  # auto: negotiates 2026-07-28 with both servers


@dataclass
class Series:
    latencies: list[float] = field(default_factory=list)
    first_calls: list[float] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0
    children_cpu: float = 0.0
    client_cpu: float = 0.0
    errors: int = 0
    first_error: str | None = None

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def rate(self) -> float:
        return self.calls / self.wall if self.wall else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def cores_busy(self) -> float:
        """Server, spawned tools and client CPU over wall time: near the core count means CPU-bound."""
        return (self.server_cpu + self.children_cpu + self.client_cpu) / self.wall

    @property
    def own_cpu_per_call(self) -> float:
        """The server process's own CPU per call (user + system), its spawned tools' not included, in seconds."""
        return self.server_cpu / self.calls


async def one_call(session: Client, series: Series) -> None:
    started = time.perf_counter()
    try:
        result = await session.call_tool("nmap", ARGUMENTS)
        failed = result.is_error or not result.structured_content
        problem = None if not failed else str(result.content)[:300]
    except Exception as exc:  # noqa: BLE001 — counted and shown, not fatal to the run
        failed, problem = True, repr(exc)[:300]
    series.latencies.append(time.perf_counter() - started)
    if failed:
        series.errors += 1
        series.first_error = series.first_error or problem


async def run_chunk(server: ServerProcess, kind: str, calls: int, width: int, shared: bool, series: Series) -> None:
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(client(kind, server.url)) for _ in range(1 if shared else width)]
        # Each session's first call, one session at a time and off the clock: the SDK client
        # runs tools/list and compiles the tool's output schema before it (once per session).
        for session in sessions:
            first = Series()
            await one_call(session, first)
            series.first_calls += first.latencies
            series.errors += first.errors
            series.first_error = series.first_error or first.first_error
        remaining = calls

        async def worker(session: Client) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one_call(session, series)

        cpu0, client0, t0 = server.cpu(), time.process_time(), time.perf_counter()
        if width == 1:
            await worker(sessions[0])
        else:
            async with asyncio.TaskGroup() as tasks:
                for i in range(width):
                    tasks.create_task(worker(sessions[0] if shared else sessions[i]))
        series.wall += time.perf_counter() - t0
        series.client_cpu += time.process_time() - client0
        own, children = server.cpu()
        series.server_cpu += own - cpu0[0]
        series.children_cpu += children - cpu0[1]


def chunks(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def bench(servers: dict[str, ServerProcess], args: argparse.Namespace) -> dict[tuple[str, str, str], Series]:
    modes = {"seq": (args.calls, 1), f"{args.width}-way": (args.concurrent_calls, args.width)}
    for kind in args.transports:  # warm-up: imports, first spawns, connection setup paths
        for server in servers.values():
            await run_chunk(server, kind, 20, 1, False, Series())
            await run_chunk(server, kind, 4 * args.width, args.width, args.shared_session, Series())

    results: dict[tuple[str, str, str], Series] = {}
    for round_no in range(args.rounds):
        order = list(servers) if round_no % 2 == 0 else list(servers)[::-1]
        for kind in args.transports:
            for mode, (total, width) in modes.items():
                n = chunks(total, args.rounds)[round_no]
                for name in order:
                    series = results.setdefault((kind, mode, name), Series())
                    await run_chunk(servers[name], kind, n, width, args.shared_session, series)
    return results


# --- the report ---------------------------------------------------------------------------------


CPU_TARGET = 0.5  # labrecon's own CPU per call over the SDK server's, at most


def cells(results: dict[tuple[str, str, str], Series], args: argparse.Namespace) -> list[tuple[str, str]]:
    found = {(kind, mode) for kind, mode, _ in results}
    return sorted(found, key=lambda km: (args.transports.index(km[0]), km[1] != "seq"))


def headline(results: dict[tuple[str, str, str], Series], args: argparse.Namespace, names: list[str]) -> list[str]:
    """The server's own CPU per call (user + system of its process, not the tools it spawned), as ratios."""
    lines = [f"labrecon / SDK, server CPU per call (its process alone, user + system; target <= {CPU_TARGET}x):"]
    met = 0
    for kind, mode in cells(results, args):
        ours, theirs = results[(kind, mode, OWN)], results[(kind, mode, REFERENCE)]
        ratio = ours.own_cpu_per_call / theirs.own_cpu_per_call
        ok = ratio <= CPU_TARGET and ours.errors == 0
        met += ok
        lines.append(
            f"  {kind:<12} {mode:<7} {ours.own_cpu_per_call * 1e3:5.2f} vs {theirs.own_cpu_per_call * 1e3:5.2f} "
            f"ms/call = {ratio:4.2f}x  {'meets' if ok else 'MISSES'}   "
            f"(throughput {ours.rate() / theirs.rate():4.2f}x, p99 {ours.pct(0.99) / theirs.pct(0.99):4.2f}x)"
        )
    lines.append(f"  cells meeting the target: {met}/{len(cells(results, args))}")
    for name in names:
        if name in (OWN, REFERENCE):
            continue
        lines += ["", f"{name} / this checkout's labrecon, server CPU per call and throughput:"]
        for kind, mode in cells(results, args):
            theirs, ours = results[(kind, mode, name)], results[(kind, mode, OWN)]
            lines.append(
                f"  {kind:<12} {mode:<7} CPU {theirs.own_cpu_per_call * 1e3:5.2f} "
                f"vs {ours.own_cpu_per_call * 1e3:5.2f} ms/call "
                f"= {theirs.own_cpu_per_call / ours.own_cpu_per_call:4.2f}x   "
                f"throughput {theirs.rate() / ours.rate():4.2f}x"
            )
    return lines


def render(
    results: dict[tuple[str, str, str], Series], args: argparse.Namespace, names: list[str], elapsed: float
) -> list[str]:
    sharing = "tasks on one session" if args.shared_session else "separate sessions"
    log_level = args.labrecon_log_level or "info (default)"
    lines = [
        f"tools/call nmap over HTTP, fast fakes, 127.0.0.1; {args.rounds} interleaved rounds; "
        f"calls per series: {args.calls} sequential and {args.concurrent_calls} {args.width}-way ({sharing}) per cell; "
        f"labrecon logging {log_level}; run took {elapsed:.0f}s",
        "client: official mcp SDK Client (same code for every server); reference: mcp SDK MCPServer on uvicorn with "
        "h11 and the asyncio loop (bench/sdk_reference_server.py)",
        "",
        *headline(results, args, names),
        "",
        f"{'transport':<12} {'series':<7} {'server':<9} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU ms/call':>16} {'spawned ms/call':>16} {'client CPU ms/call':>19} {'cores busy':>11} {'errors':>7}",
    ]
    for (kind, mode, name), s in results.items():
        lines.append(
            f"{kind:<12} {mode:<7} {name:<9} {s.calls:>6} {s.rate():>8.0f} {s.pct(0.5) * 1e3:>8.2f} "
            f"{s.pct(0.99) * 1e3:>8.2f} {s.own_cpu_per_call * 1e3:>16.2f} {s.children_cpu / s.calls * 1e3:>16.2f} "
            f"{s.client_cpu / s.calls * 1e3:>19.2f} {s.cores_busy:>11.2f} {s.errors:>7}"
        )
    lines += [
        "srv CPU: the server process's own user + system time (from /proc); spawned: its reaped children's, "
        "the fake scanners; cores busy: server + spawned + client CPU over wall time",
        "",
        "first call on a fresh session (not in the figures above; the SDK client lists the tools and "
        "compiles the tool's output schema first), p50 / max ms:",
    ]
    for kind in args.transports:
        firsts = {
            name: sorted(t for (k, _, n), s in results.items() if k == kind and n == name for t in s.first_calls)
            for name in names
        }
        lines.append(
            f"  {kind:<12} "
            + "   ".join(f"{name} {percentile(v, 0.5) * 1e3:6.2f} / {v[-1] * 1e3:6.2f}" for name, v in firsts.items())
            + f"   ({len(firsts[REFERENCE])} sessions each)"
        )
    for (kind, mode, name), s in results.items():
        if s.first_error:
            lines.append(f"first error, {name} {kind} {mode}: {s.first_error}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per server and transport")
    parser.add_argument("--concurrent-calls", type=int, default=1600, help="calls in the concurrent series")
    parser.add_argument("--width", type=int, default=16, help="calls in flight in the concurrent series")
    parser.add_argument("--rounds", type=int, default=4, help="chunks each series is split into, interleaved")
    parser.add_argument(
        "--transports", default=",".join(TRANSPORTS), help="comma-separated subset of " + ",".join(TRANSPORTS)
    )
    parser.add_argument("--shared-session", action="store_true", help="concurrent calls as tasks on one session")
    parser.add_argument(
        "--labrecon-log-level", choices=("debug", "info", "warning", "error"), help="default: labrecon's own (info)"
    )
    add_compare_option(parser)
    parser.add_argument("--out", default="bench/results/http.txt")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where they are")
    args = parser.parse_args()
    args.transports = [t for t in args.transports.split(",") if t]
    unknown = set(args.transports) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transports: {sorted(unknown)}")

    work = Path(tempfile.mkdtemp(prefix="labrecon-http-bench-"))
    fakes = install_fast_fakes(work / "fakes")
    config = work / "labrecon.toml"
    config.write_text(
        "[policy]\ndns = false\n"
        + (f'[logging]\nlevel = "{args.labrecon_log_level}"\n' if args.labrecon_log_level else "")
        + "".join(
            f'[tools.{tool}]\nbinary = "{path}"\nconcurrency = 16\nmax_queue = 256\n' for tool, path in fakes.items()
        )
    )

    started = time.perf_counter()
    servers: dict[str, ServerProcess] = {}
    try:
        for name, command in variants(args.compare).items():
            servers[name] = start_labrecon(name, command, config, work)
        servers[REFERENCE] = start_sdk(fakes["nmap"], work)
        results = asyncio.run(bench(servers, args))
    finally:
        for server in servers.values():
            server.stop()
    lines = render(results, args, list(servers), time.perf_counter() - started)
    if args.keep_logs:
        lines.append(f"server logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    report(lines, args.out)


if __name__ == "__main__":
    main()
