"""`labrecon serve` over stdio, driven by the official MCP SDK client in both protocol eras.

nmap and gobuster are the real binaries, scanning only listeners this test
opens on 127.0.0.1; masscan is the fake (it never runs for real).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client, StdioServerParameters

from tests.fakes.install import install_fake
from tests.helpers import process_alive, wait_until
from tests.http_support import HANDLE_TOOLS
from tests.runtimes import scan_calls

LABRECON = str(Path(sys.executable).with_name("labrecon"))
needs_real_tools = pytest.mark.skipif(
    not (shutil.which("nmap") and shutil.which("gobuster")), reason="nmap and gobuster are installed by scripts/setup"
)


@pytest.fixture
def tcp_listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.listen(16)
        yield server.getsockname()[1]


@pytest.fixture
def web_root(tmp_path):
    root = tmp_path / "www"
    (root / "admin").mkdir(parents=True)
    (root / "admin" / "index.html").write_text("admin")
    (root / "backup.zip").write_text("PK")
    handler = functools.partial(QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.server_address[1]
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def write_config(tmp_path: Path, **nmap) -> Path:
    words = tmp_path / "words"
    words.mkdir(exist_ok=True)
    (words / "small.txt").write_text("admin\nbackup.zip\nnot-there\nalso-missing\n")
    masscan = install_fake(tmp_path / "fakes", "masscan")
    lines = [
        "[policy]",
        'allowed_networks = ["127.0.0.1/32", "10.0.0.0/8"]',
        "dns = false",
        "[tools.masscan]",
        f'binary = "{masscan}"',
        "[tools.gobuster]",
        f'wordlist_dir = "{words}"',
        "[tools.nmap]",
    ]
    lines += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in nmap.items()]
    path = tmp_path / "labrecon.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def server(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=LABRECON,
        args=["serve", "--config", str(config)],
        env={"PATH": os.environ["PATH"], "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]},  # the test's own store
    )


@needs_real_tools
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_lists_and_calls_every_tool(tmp_path, tcp_listener, web_root, mode):
    config = write_config(tmp_path)

    async def scenario():
        async with Client(server(config), mode=mode) as client:
            expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
            assert client.protocol_version == expected
            listed = await client.list_tools()
            tools = {tool.name: tool for tool in listed.tools}
            assert list(tools) == ["nmap", "masscan", "gobuster", *HANDLE_TOOLS]
            for tool in listed.tools[:3]:
                assert tool.title and tool.description and tool.output_schema
                assert tool.input_schema["required"][0] == "target"
                assert tool.annotations is not None and tool.annotations.read_only_hint is True

            # The port as a number, the way the MCP Inspector sends it.
            nmap = await client.call_tool(
                "nmap", {"target": "127.0.0.1", "ports": tcp_listener, "scan_type": "connect", "extra_args": "-n -Pn"}
            )
            assert not nmap.is_error, nmap.content
            ports = nmap.structured_content["result"]["hosts"][0]["ports"]
            assert {"port": tcp_listener, "state": "open"}.items() <= ports[0].items()

            gobuster = await client.call_tool(
                "gobuster", {"target": "127.0.0.1", "port": web_root, "wordlist": "small.txt"}
            )
            assert not gobuster.is_error, gobuster.content
            found = {f["path"].rstrip("/") for f in gobuster.structured_content["result"]["findings"]}
            assert found == {"/admin", "/backup.zip"}

            masscan = await client.call_tool("masscan", {"target": "10.0.0.0/30", "ports": "80,443"})
            assert not masscan.is_error, masscan.content
            assert masscan.structured_content["result"]["hosts"]

            refused = await client.call_tool("nmap", {"target": "8.8.8.8"})
            assert refused.is_error
            assert refused.structured_content["error"]["error_type"] == "validation"

    asyncio.run(scenario())
    assert len(scan_calls(tmp_path / "fakes" / "masscan")) == 1


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_progress_arrives_in_order(tmp_path, mode):
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="slow", delay_sec=1.0, steps=4)
    config = write_config(tmp_path, binary=str(nmap))
    seen: list[float] = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async def scenario():
        async with Client(server(config), mode=mode) as client:
            result = await client.call_tool("nmap", {"target": "10.0.0.5"}, progress_callback=on_progress)
            assert not result.is_error, result.content

    asyncio.run(scenario())
    assert len(seen) >= 2
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_sdk_arguments_are_checked_as_their_schema_says(tmp_path):
    """Ports as a number or a list are scanned; a string timeout, a boolean count, a zero host timeout
    and a caller's vhost domain are refused before anything runs."""
    nmap = install_fake(tmp_path / "fakes", "nmap", ports=[22, 80, 443])
    config = write_config(tmp_path, binary=str(nmap))
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("nmap", {"target": "10.0.0.5", "timeout_sec": "30"}, "timeout_sec"),
        ("nmap", {"target": "10.0.0.5", "top_ports": True}, "top_ports"),
        ("nmap", {"target": "10.0.0.5", "ports": True}, "ports"),
        ("nmap", {"target": "10.0.0.5", "extra_args": "--host-timeout 0"}, "--host-timeout"),
        ("gobuster", {"target": "10.0.0.5", "mode": "vhost", "extra_args": "--domain evil.com"}, "--domain"),
    ]

    async def open_ports(client, ports) -> list[int]:
        result = await client.call_tool("nmap", {"target": "10.0.0.5", "ports": ports})
        assert not result.is_error, result.content
        ports = result.structured_content["result"]["hosts"][0]["ports"]
        return [port["port"] for port in ports if port["state"] == "open"]

    async def scenario():
        async with Client(server(config), mode="legacy") as client:
            schema = {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}["nmap"]
            Draft202012Validator.check_schema(schema)
            assert {"string", "integer", "array"} <= {o.get("type") for o in schema["properties"]["ports"]["anyOf"]}
            assert await open_ports(client, 22) == [22]
            assert await open_ports(client, [22, "80-81"]) == [22, 80]
            for tool, arguments, named in refusals:
                refused = await client.call_tool(tool, arguments)
                assert refused.is_error
                error = refused.structured_content["error"]
                assert error["error_type"] == "validation" and named in error["message"]

    asyncio.run(scenario())
    assert [call["argv"][call["argv"].index("-p") + 1] for call in scan_calls(nmap)] == ["22", "22,80-81"]


def spawn_raw(config: Path, grace: str = "5") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [LABRECON, "serve", "--config", str(config), "--grace", grace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def rpc(proc, message: str) -> None:
    proc.stdin.write(message.encode() + b"\n")
    proc.stdin.flush()


INIT = (
    '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    '"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}'
)


def start_calls(proc, count: int) -> None:
    rpc(proc, INIT)
    assert b'"id":0' in proc.stdout.readline()
    rpc(proc, '{"jsonrpc":"2.0","method":"notifications/initialized"}')
    for i in range(1, count + 1):
        call = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "nmap", "arguments": {"target": f"10.0.0.{i}"}}}
        rpc(proc, json.dumps(call, separators=(",", ":")))


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_shutdown_with_calls_in_flight_answers_every_call(tmp_path, how):
    release = tmp_path / "release"
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="block", release_file=str(release))
    proc = spawn_raw(write_config(tmp_path, binary=str(nmap), concurrency=2))
    assert proc.stdin is not None and proc.stdout is not None
    start_calls(proc, 3)
    wait_until(lambda: len(scan_calls(nmap)) == 2, timeout=60.0, what="two calls running")
    if how == "eof":
        proc.stdin.close()
    else:
        proc.send_signal(signal.SIGTERM)
    # Draining: the running calls finish within the grace period, the queued one too.
    release.touch()
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=20) == 0
    for i in (1, 2, 3):
        assert f'"id":{i},' in out or f'"id":{i}}}' in out
    assert out.count('"isError":false') == 3


def test_shutdown_after_grace_kills_and_answers(tmp_path):
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="hang_with_child")
    config = write_config(tmp_path, binary=str(nmap))
    proc = spawn_raw(config, grace="0.5")
    assert proc.stdout is not None
    start_calls(proc, 2)
    calls = wait_until(lambda: len(c := scan_calls(nmap)) == 2 and all(x.get("child_pid") for x in c) and c)
    assert calls
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=20) == 0
    assert out.count('"isError":true') == 2
    assert out.count('"error_type":"cancelled"') >= 2
    pids = [pid for call in calls for pid in (call["pid"], call["child_pid"])]
    wait_until(lambda: not any(process_alive(pid) for pid in pids))


def test_audit_log_records_who_ran_what_and_how_it_ended(tmp_path):
    audit = tmp_path / "audit" / "calls.jsonl"
    nmap = install_fake(tmp_path / "fakes", "nmap")
    config = write_config(tmp_path, binary=str(nmap))
    config.write_text(config.read_text() + f'[logging]\naudit_path = "{audit}"\n')

    async def scenario():
        async with Client(server(config), mode="legacy") as client:
            assert not (await client.call_tool("nmap", {"target": "10.0.0.5", "ports": "22"})).is_error
            assert (await client.call_tool("nmap", {"target": "8.8.8.8"})).is_error

    asyncio.run(scenario())
    import getpass
    import json

    started, ran, refused = [json.loads(line) for line in audit.read_text().splitlines()]
    assert started["event"] == "scan_started" and started["owner"] == getpass.getuser()
    assert started["tool"] == "nmap" and started["target"] == "10.0.0.5" and started["scan_id"]
    assert ran["event"] == refused["event"] == "call_answered" and ran["call_id"] == started["call_id"]
    assert ran["owner"] == getpass.getuser() and ran["via"].startswith("stdio mcp") and ran["tool"] == "nmap"
    assert ran["target"] == "10.0.0.5" and ran["outcome"] == "ok" and ran["argv"][-1] == "10.0.0.5"
    assert refused["outcome"] == "validation" and refused["arguments"] == {"target": "8.8.8.8"}
    assert refused["argv"] == [] and "8.8.8.8" in refused["error"]
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
