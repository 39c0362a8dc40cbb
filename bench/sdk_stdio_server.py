"""The stdio comparison point for bench/stdio_roundtrip.py: the official SDK's `MCPServer` spawning the same fake.

    .venv/bin/python bench/sdk_stdio_server.py BINARY

Built the way the SDK's documentation builds a stdio server: an `MCPServer`
with one tool, `nmap(target, ports)`, that spawns BINARY with the argv the
benchmark's raw spawn uses (`-oX - -p PORTS TARGET`; no shell, stdin
/dev/null) and returns its stdout as text, run with `server.run("stdio")`.
It checks nothing and only ever runs the fast fakes.
"""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import MCPServer


def build_server(binary: str) -> MCPServer:
    server = MCPServer("sdk-stdio-reference", log_level="WARNING")

    @server.tool()
    async def nmap(target: str, ports: str) -> str:
        """Scan `target` on `ports` with nmap (here: the benchmark's fast fake)."""
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-oX",
            "-",
            "-p",
            ports,
            target,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, _ = await proc.communicate()
        return stdout.decode()

    return server


if __name__ == "__main__":
    build_server(sys.argv[1]).run("stdio")
