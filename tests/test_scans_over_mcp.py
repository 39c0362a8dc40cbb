"""The handle pattern end to end, with the official SDK client over stdio and over Streamable HTTP.

The fake nmap takes 3 s and a call waits 1 s: the call answers `working` with its scan id, and the
handle tools and resources take it from there.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import TextResourceContents

from tests.fakes.install import install_fake
from tests.helpers import process_alive, wait_until
from tests.http_support import binary, running_daemon, sdk_client
from tests.runtimes import scan_calls
from tests.test_mcp_stdio_e2e import server, write_config

SLOW_NMAP = {"mode": "slow", "delay_sec": 3}


async def handle_pattern(client: Client, nmap: Path | str) -> None:
    first = await client.call_tool("nmap", {"target": "10.0.0.5", "ports": "22,80"})
    assert not first.is_error, first
    assert first.structured_content["status"] == "working"
    scan_id = first.structured_content["scan_id"]

    status = await client.call_tool("scan_status", {"scan_id": scan_id, "wait_sec": 60})
    assert not status.is_error, status
    assert status.structured_content["status"] == "completed"

    result = await client.call_tool("scan_result", {"scan_id": scan_id})
    assert not result.is_error, result
    rows = result.structured_content["rows"]
    assert [(row["host"], row["port"], row["state"]) for row in rows] == [
        ("10.0.0.5", 22, "open"),
        ("10.0.0.5", 80, "open"),
    ]

    read = await client.read_resource(f"labrecon://scans/{scan_id}")
    (contents,) = read.contents
    assert isinstance(contents, TextResourceContents)
    whole = json.loads(contents.text)
    assert whole["scan_id"] == scan_id and whole["ok"] is True
    assert [port["port"] for port in whole["result"]["hosts"][0]["ports"]] == [22, 80]

    second = await client.call_tool("nmap", {"target": "10.0.0.6"})
    assert second.structured_content["status"] == "working"
    await anyio.to_thread.run_sync(lambda: wait_until(lambda: len(scan_calls(nmap)) == 2, what="the second scan"))
    pid = scan_calls(nmap)[-1]["pid"]
    cancelled = await client.call_tool("scan_cancel", {"scan_id": second.structured_content["scan_id"]})
    assert not cancelled.is_error, cancelled
    assert cancelled.structured_content["status"] == "cancelled"
    assert not process_alive(pid)

    listed = await client.call_tool("scans_list", {})
    assert [scan["status"] for scan in listed.structured_content["scans"]] == ["cancelled", "completed"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_handle_pattern_over_stdio(tmp_path, mode):
    nmap = install_fake(tmp_path / "fakes", "nmap", **SLOW_NMAP)
    config = write_config(tmp_path, binary=str(nmap))
    config.write_text(config.read_text() + f'[scans]\npath = "{tmp_path / "scans.sqlite3"}"\ninline_wait_sec = 1\n')

    async def scenario() -> None:
        async with Client(server(config), mode=mode) as client:
            await handle_pattern(client, nmap)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["legacy", "auto"])
def test_the_handle_pattern_over_streamable_http(make_runtime, kind):
    runtime = make_runtime(tools={"nmap": {"scenario": SLOW_NMAP}}, scans={"inline_wait_sec": 1})
    with running_daemon(runtime) as daemon:

        async def scenario() -> None:
            async with sdk_client(kind, daemon.url) as client:
                await handle_pattern(client, binary(runtime, "nmap"))

        asyncio.run(scenario())
