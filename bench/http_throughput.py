"""HTTP benchmark: `tools/call` round trips per second, labrecon's daemon against the official SDK's own server.

    .venv/bin/python bench/http_throughput.py [--calls 300] [--concurrent-calls 1600] [--width 16]
        [--rounds 4] [--transports sse,http,http-modern] [--shared-session] [--labrecon-log-level LEVEL]
        [--out bench/results/http.txt]

Two servers run side by side, each in its own process, bound to 127.0.0.1:

- labrecon: `labrecon serve --transport http --port 0` (the bound port is read
  off its listening socket with psutil, then /livez is awaited), config: policy dns=false,
  every tool a fast fake (bench/fast_fakes.py) with concurrency 16 and
  max_queue 256, logging at its default level, info (two JSON lines per call,
  to a file; `--labrecon-log-level warning` shows what that costs);
- the reference: bench/sdk_reference_server.py, an `MCPServer` from the
  official `mcp` SDK with an equivalent `nmap(target, ports)` tool (spawns the
  same fast fake with asyncio, captures it, parses the XML with defusedxml,
  returns structured content), its Streamable HTTP and SSE apps on one uvicorn.

Both are driven by the same client code, the official SDK's `mcp.Client`,
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

Noise is shared: each series is split into `--rounds` chunks, and the two
servers' chunks of the same series run back to back, the order alternating
per round. Throughput is calls over summed wall time of a series' chunks;
p50/p99 are over every call's round trip. "srv CPU" is the server process's
CPU time per call, its own plus its reaped children's (the fake scanners,
shown apart as "spawned"), which is far less sensitive to a noisy machine
than wall time; psutil reads it in clock ticks, so short series are coarse.
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

HERE = Path(__file__).resolve().parent
LABRECON = str(Path(sys.executable).with_name("labrecon"))
TRANSPORTS = ("sse", "http", "http-modern")
SERVERS = ("labrecon", "sdk")
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


def start_labrecon(config: Path, work: Path) -> ServerProcess:
    """`labrecon serve --port 0`; the bound port is read off its listening socket, whatever the log level."""
    server = ServerProcess(
        "labrecon",
        [LABRECON, "serve", "--config", str(config), "--transport", "http", "--host", "127.0.0.1", "--port", "0"],
        work / "labrecon.log",
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
        raise RuntimeError("labrecon did not start listening in time")
    except BaseException:
        server.stop()
        raise


def start_sdk(binary: str, work: Path) -> ServerProcess:
    server = ServerProcess(
        "sdk",
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
    def server_cpu_per_call(self) -> float:
        """The server's own CPU per call plus its spawned tools', in seconds."""
        return (self.server_cpu + self.children_cpu) / self.calls

    @property
    def cpu_besides_server_per_call(self) -> float:
        """What the client and the spawned tools cost per call, in seconds: all but the server's own share."""
        return (self.client_cpu + self.children_cpu) / self.calls


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
        order = SERVERS if round_no % 2 == 0 else SERVERS[::-1]
        for kind in args.transports:
            for mode, (total, width) in modes.items():
                n = chunks(total, args.rounds)[round_no]
                for name in order:
                    series = results.setdefault((kind, mode, name), Series())
                    await run_chunk(servers[name], kind, n, width, args.shared_session, series)
    return results


# --- the report ---------------------------------------------------------------------------------


def ceiling(ours: Series, theirs: Series) -> float:
    """labrecon's throughput if its own CPU per call were zero, over the SDK's: what the setup allows at best.

    On a machine with few cores the client and the spawned tools take most of
    the CPU; whatever the server does, calls per second cannot exceed the busy
    cores divided by what remains per call.
    """
    return ours.cores_busy / ours.cpu_besides_server_per_call / theirs.rate()


def budget(ours: Series, theirs: Series, target: float = 1.5) -> float:
    """labrecon's own CPU per call (s) at which `target` x the SDK's throughput is reached, same assumptions as `ceiling`.

    Calls per second are the busy cores over the CPU each call costs
    (client + spawned tool + server); solved for the server's share.
    """
    return ours.cores_busy / (target * theirs.rate()) - ours.cpu_besides_server_per_call


def render(results: dict[tuple[str, str, str], Series], args: argparse.Namespace, elapsed: float) -> list[str]:
    sharing = "tasks on one session" if args.shared_session else "separate sessions"
    log_level = args.labrecon_log_level or "info (default)"
    lines = [
        f"tools/call nmap over HTTP, fast fakes, 127.0.0.1; {args.rounds} interleaved rounds; "
        f"{args.calls} sequential calls and {args.concurrent_calls} {args.width}-way calls ({sharing}) per cell; "
        f"labrecon logging {log_level}",
        "client: official mcp SDK Client (same code for both servers); reference: mcp SDK MCPServer "
        "(bench/sdk_reference_server.py)",
        "",
        f"{'transport':<12} {'series':<7} {'server':<9} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU ms/call':>16} {'(own + spawned)':>16} {'client CPU ms/call':>19} {'cores busy':>11} {'errors':>7}",
    ]
    for (kind, mode, name), s in results.items():
        lines.append(
            f"{kind:<12} {mode:<7} {name:<9} {s.calls:>6} {s.rate():>8.0f} {s.pct(0.5) * 1e3:>8.2f} "
            f"{s.pct(0.99) * 1e3:>8.2f} {s.server_cpu_per_call * 1e3:>16.2f} "
            f"{f'({s.server_cpu / s.calls * 1e3:.2f} + {s.children_cpu / s.calls * 1e3:.2f})':>16} "
            f"{s.client_cpu / s.calls * 1e3:>19.2f} {s.cores_busy:>11.2f} "
            f"{s.errors:>7}"
        )
    lines += ["", "labrecon / SDK (target: throughput >= 1.5x at equal or better p99):"]
    met = 0
    cells = sorted(
        {(kind, mode) for kind, mode, _ in results}, key=lambda km: (args.transports.index(km[0]), km[1] != "seq")
    )
    for kind, mode in cells:
        ours, theirs = results[(kind, mode, "labrecon")], results[(kind, mode, "sdk")]
        ratio = ours.rate() / theirs.rate()
        p99_ratio = ours.pct(0.99) / theirs.pct(0.99)
        cpu_ratio = ours.server_cpu_per_call / theirs.server_cpu_per_call
        ok = ratio >= 1.5 and p99_ratio <= 1.0 and ours.errors == 0
        met += ok
        lines.append(
            f"  {kind:<12} {mode:<7} throughput {ratio:5.2f}x   p99 {ours.pct(0.99) * 1e3:7.2f} vs "
            f"{theirs.pct(0.99) * 1e3:7.2f} ms ({p99_ratio:4.2f}x)   srv CPU/call {cpu_ratio:4.2f}x   "
            f"ceiling {ceiling(ours, theirs):4.2f}x   {'meets target' if ok else 'misses target'}"
        )
        lines.append(
            f"  {'':<20} 1.5x needs labrecon's own CPU <= {budget(ours, theirs) * 1e3:5.2f} ms/call; it used "
            f"{ours.server_cpu / ours.calls * 1e3:.2f}, the SDK server {theirs.server_cpu / theirs.calls * 1e3:.2f}"
        )
    lines.append(f"cells meeting the target: {met}/{len(cells)}; run took {elapsed:.0f}s")
    lines.append(
        "ceiling: the ratio a labrecon costing no CPU at all would reach here, with the cores as busy as they were "
        "and the client and the spawned fakes costing what they did; the CPU needed for 1.5x is worked out the same way"
    )
    lines += ["", "first call on a fresh session (not in the figures above; the SDK client lists the tools and "
              "compiles the tool's output schema first), p50 / max ms:"]
    for kind in args.transports:
        firsts = {
            name: sorted(sum((s.first_calls for (k, _, n), s in results.items() if k == kind and n == name), []))
            for name in SERVERS
        }
        lines.append(
            f"  {kind:<12} "
            + "   ".join(f"{name} {percentile(v, 0.5) * 1e3:6.2f} / {v[-1] * 1e3:6.2f}" for name, v in firsts.items())
            + f"   ({len(firsts['sdk'])} sessions each)"
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
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated subset of " + ",".join(TRANSPORTS))
    parser.add_argument("--shared-session", action="store_true", help="concurrent calls as tasks on one session")
    parser.add_argument(
        "--labrecon-log-level", choices=("debug", "info", "warning", "error"), help="default: labrecon's own (info)"
    )
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
        servers["labrecon"] = start_labrecon(config, work)
        servers["sdk"] = start_sdk(fakes["nmap"], work)
        results = asyncio.run(bench(servers, args))
    finally:
        for server in servers.values():
            server.stop()
    lines = render(results, args, time.perf_counter() - started)
    if args.keep_logs:
        lines.append(f"server logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    report(lines, args.out)


if __name__ == "__main__":
    main()
