"""The comparison point for bench/http_throughput.py: an `nmap` tool on the official MCP SDK's own server.

    .venv/bin/python bench/sdk_reference_server.py --binary PATH [--port 0]

Built the way the SDK's documentation builds one: an `MCPServer` with one
tool, `nmap(target, ports)`, whose work matches what labrecon does for the
same call with the fast fakes: spawn the binary with
`asyncio.create_subprocess_exec` (no shell, stdin /dev/null, a minimal
environment, its own session, a timeout), capture stdout and stderr, parse
the XML with defusedxml, and return a pydantic model, which the SDK sends as
`structuredContent` plus its JSON as text. At most 16 runs at once, like
labrecon's `concurrency = 16`.

The SDK's Streamable HTTP app (`/mcp`, both the initialize handshake and the
2026-07-28 per-request era) and its legacy SSE app (`/sse`, `/messages/`)
are served together on one uvicorn server bound to 127.0.0.1, as labrecon
serves both on one port. The SDK's own localhost DNS-rebinding protection
stays on (labrecon checks Origin too). uvicorn's access log is off, as it is
in labrecon. Once listening, the server prints `PORT <n>` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

import uvicorn
from defusedxml.ElementTree import fromstring
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field
from starlette.applications import Starlette

MINIMAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
TIMEOUT_SEC = 300.0


class Port(BaseModel):
    port: int
    protocol: str
    state: str | None = None
    reason: str | None = None
    service: str | None = None


class Host(BaseModel):
    address: str | None = None
    status: str | None = None
    ports: list[Port] = Field(default_factory=list)


class NmapScan(BaseModel):
    target: str
    argv: list[str]
    returncode: int | None
    duration_sec: float
    stderr: str
    hosts: list[Host]
    elapsed_sec: float | None = None


def parse_nmap_xml(xml: bytes) -> tuple[list[Host], float | None]:
    root = fromstring(xml)
    hosts = []
    for host in root.iter("host"):
        status = host.find("status")
        address = host.find("address")
        ports = []
        for port in host.iter("port"):
            state = port.find("state")
            service = port.find("service")
            ports.append(
                Port(
                    port=int(port.get("portid", "0")),
                    protocol=port.get("protocol", "tcp"),
                    state=None if state is None else state.get("state"),
                    reason=None if state is None else state.get("reason"),
                    service=None if service is None else service.get("name"),
                )
            )
        hosts.append(
            Host(
                address=None if address is None else address.get("addr"),
                status=None if status is None else status.get("state"),
                ports=ports,
            )
        )
    finished = root.find("runstats/finished")
    elapsed = finished.get("elapsed") if finished is not None else None
    return hosts, float(elapsed) if elapsed else None


def build_server(binary: str, concurrency: int = 16) -> MCPServer:
    server = MCPServer("sdk-reference", log_level="WARNING")
    slots = asyncio.Semaphore(concurrency)

    @server.tool()
    async def nmap(target: str, ports: str) -> NmapScan:
        """Scan `target` on `ports` with nmap (here: the benchmark's fast fake)."""
        argv = [binary, "-oX", "-", "-n", "-p", ports, target]
        async with slots:
            loop = asyncio.get_running_loop()
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=MINIMAL_ENV,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT_SEC)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            duration = loop.time() - started
        hosts, elapsed = parse_nmap_xml(stdout)
        return NmapScan(
            target=target,
            argv=argv,
            returncode=proc.returncode,
            duration_sec=round(duration, 6),
            stderr=stderr.decode("utf-8", "replace"),
            hosts=hosts,
            elapsed_sec=elapsed,
        )

    return server


def build_app(server: MCPServer) -> Starlette:
    """Streamable HTTP and SSE on one app; the session manager's lifespan is the Streamable HTTP app's."""
    streamable = server.streamable_http_app(host="127.0.0.1")
    sse = server.sse_app(host="127.0.0.1")
    return Starlette(routes=[*streamable.routes, *sse.routes], lifespan=lambda app: server.session_manager.run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, help="the fake nmap to run")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"not executable: {args.binary}")

    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP, and without it every response waits ~40 ms for a delayed ACK (Nagle).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)

    app = build_app(build_server(args.binary, args.concurrency))
    # What `pip install mcp` gives a user: h11 and the asyncio loop, whatever else is installed beside it.
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, lifespan="on", loop="asyncio", http="h11"
    )
    uvicorn_server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uvicorn_server.serve(sockets=[listener]))
        while not uvicorn_server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
