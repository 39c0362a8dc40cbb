"""How long `/livez` takes while one call's DNS look-up hangs.

    .venv/bin/python bench/dns_stall.py [--hang-sec 6] [--out bench/results/dns.txt]

The HTTP daemon runs on 127.0.0.1 with instant fake scanners and a resolver
that takes `--hang-sec` to answer (no name is looked up for real). One MCP
client calls nmap on a name; as soon as its look-up starts, `/livez` is asked
again and again until the look-up returns: the latencies are reported, with
when and how the slow call itself was answered. Client and daemon share one
process (and its GIL), so the tail includes the client's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_fakes import install_fast_fakes
from bench.report import percentile, report
from supervisor import Runtime
from transports.http.daemon import HttpDaemon

NAME = "slow.lab.internal"


class SlowResolver:
    """Answers every name with 10.0.0.9 after `hang_sec`, like a DNS server that is slow to respond."""

    def __init__(self, hang_sec: float) -> None:
        self.hang_sec = hang_sec
        self.started = threading.Event()
        self.returned = threading.Event()

    def __call__(self, name: str) -> list[ipaddress.IPv4Address]:
        self.started.set()
        time.sleep(self.hang_sec)
        self.returned.set()
        return [ipaddress.IPv4Address("10.0.0.9")]


async def measure(url: str, resolver: SlowResolver) -> tuple[list[float], float, str]:
    async with Client(url + "/mcp") as client, httpx.AsyncClient(timeout=120) as http:
        (await http.get(url + "/livez")).raise_for_status()  # the connection is open before the clock starts
        started = time.perf_counter()
        slow_call = asyncio.create_task(client.call_tool("nmap", {"target": NAME}))
        answered_at: list[float] = []
        slow_call.add_done_callback(lambda _: answered_at.append(time.perf_counter()))
        await asyncio.to_thread(resolver.started.wait)
        latencies = []
        while not resolver.returned.is_set():
            asked = time.perf_counter()
            response = await http.get(url + "/livez")
            response.raise_for_status()
            latencies.append(time.perf_counter() - asked)
        result = await slow_call
        answered = answered_at[0] - started
        content = result.structured_content or {}
        outcome = f"error {content['error']['error_type']}: {content['error']['message']}" if result.is_error else "ok"
        return latencies, answered, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hang-sec", type=float, default=6.0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dns.txt"))
    args = parser.parse_args()
    resolver = SlowResolver(args.hang_sec)
    with tempfile.TemporaryDirectory() as directory:
        binaries = install_fast_fakes(Path(directory))
        config = {"policy": {"dns": True}, "tools": {name: {"binary": path} for name, path in binaries.items()}}
        with Runtime.start(config, resolver=resolver) as runtime:
            daemon = HttpDaemon.start(runtime, runtime.settings, host="127.0.0.1", port=0)
            try:
                latencies, answered, outcome = asyncio.run(measure(daemon.url, resolver))
            finally:
                daemon.stop(grace=0)
    report(
        [
            (
                f"/livez while a {args.hang_sec:g} s look-up hangs, over {len(latencies)} requests: "
                f"first {latencies[0] * 1000:.1f} ms, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, slowest {max(latencies) * 1000:.1f} ms"
            ),
            f"the call that looked the name up was answered after {answered:.2f} s: {outcome}",
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
