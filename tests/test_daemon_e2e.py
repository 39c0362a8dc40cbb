"""The HTTP daemon as an operator runs it: a crash injected with `labrecon faults`, seen with `labrecon status`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from tests.fakes.install import install_fake
from tests.helpers import wait_until
from tests.http_support import served_url
from transports.cli import main as labrecon

LABRECON = str(Path(sys.executable).with_name("labrecon"))


@pytest.fixture
def daemon(tmp_path):
    lines = ["[policy]", "dns = false"]
    for tool in ("nmap", "masscan", "gobuster"):
        lines += [f"[tools.{tool}]", f'binary = "{install_fake(tmp_path / "bin", tool)}"']
    config = tmp_path / "labrecon.toml"
    config.write_text("\n".join(lines) + "\n")
    ops = tmp_path / "ops.sock"
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABRECON_")}
    process = subprocess.Popen(
        [LABRECON, "serve", "--config", str(config), "--transport", "http", "--port", "0", "--ops-socket", str(ops)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        url = wait_until(lambda: served_url(log) or process.poll() is not None, 20.0, what="the daemon's URL")
        assert process.poll() is None, log.read_text()
        yield url, ops, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(20)


def cli(capsys, *argv):
    code = labrecon(list(argv))
    out = capsys.readouterr().out
    return code, out


def test_status_shows_an_injected_crash_and_its_restart_over_tcp_and_the_socket(capsys, daemon):
    url, ops, process = daemon
    code, out = cli(capsys, "faults", "inject", "--url", url, "--tool", "nmap", "--kind", "crash", "--count", "1")
    assert code == 0 and "nmap crash" in out

    async def crash_and_recover():
        async with Client(f"{url}/mcp") as client:
            # The actor crashes under the call, which is tried again on its successor, and says so.
            retried = await client.call_tool("nmap", {"target": "10.0.0.5"})
            assert not retried.is_error, retried.content
            assert retried.structured_content["attempts"] == 2
            assert retried.structured_content["retried"][0]["error_type"] == "actor_restarted"
            served = await client.call_tool("nmap", {"target": "10.0.0.5"})
            assert not served.is_error and served.structured_content["attempts"] == 1

    asyncio.run(crash_and_recover())

    code, out = cli(capsys, "status", "--url", url, "--json")
    assert code == 0
    nmap = json.loads(out)["tools"]["nmap"]
    assert nmap["restarts"] == 1 and nmap["incarnation"] == 2 and nmap["state"] == "running"
    assert nmap["last_restart_reason"].startswith("crash: InjectedCrash")
    assert nmap["calls"] == {"actor_restarted": 1, "ok": 2}

    code, table = cli(capsys, "status", "--socket", str(ops))
    assert code == 0
    row = next(line for line in table.splitlines() if line.startswith("nmap "))
    assert row.split()[9] == "1" and "crash: InjectedCrash" in row  # RESTARTS, then the last reason
    code, out = cli(capsys, "faults", "list", "--socket", str(ops), "--json")
    assert json.loads(out)[0]["fired"] == 1

    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert not ops.exists()
