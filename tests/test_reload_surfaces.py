"""Reloading a serving daemon and switching its tools, the way an operator does it.

`labrecon reload`, `labrecon tools disable|enable` and `labrecon status` against the ops endpoints of a
runtime read from a file; SIGHUP and the file watcher against a real `labrecon serve` (HTTP and stdio).
A config the reload refuses changes nothing, names the key, and shows in status beside the one in force.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from actors.api import local_user
from supervisor.config import load_settings
from supervisor.runtime import Runtime
from supervisor.status import ReloadAttempt
from tests.helpers import needs_private_network, wait_until
from tests.http_support import (
    ARGUMENTS,
    ServeProcess,
    modern,
    running_daemon,
    serve_process,
    write_fake_config,
)
from transports.cli import main
from transports.http.server import HttpServer
from transports.ops.client import OpsClient
from transports.ops.endpoints import build_ops_app
from transports.ops.status_view import render_reload

TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("LABRECON_") or key == "NO_COLOR":
            monkeypatch.delenv(key)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def daemon(tmp_path) -> Iterator[tuple[Runtime, str, Path]]:
    """A runtime read from `labrecon.toml` (on fakes) and its ops endpoints on 127.0.0.1: (runtime, url, file)."""
    path = write_fake_config(tmp_path)
    runtime = Runtime.start(path)
    try:
        with HttpServer.start(build_ops_app(runtime, lambda: runtime.settings), host="127.0.0.1", port=0) as server:
            yield runtime, server.url, path
    finally:
        runtime.stop(grace=2.0)


# --- labrecon reload -------------------------------------------------------------------------------


def test_labrecon_reload_puts_the_file_in_force_and_says_what_changed(daemon, tmp_path, capsys):
    runtime, url, path = daemon
    before = runtime.settings.digest()
    write_fake_config(tmp_path, ['allowed_networks = ["10.0.0.0/8"]'], tools={"nmap": ["concurrency = 3"]})

    code, out, err = run(capsys, "reload", "--url", url)
    assert code == 0, err
    assert f"config {before} -> {runtime.settings.digest()}" in out
    assert "policy.allowed_networks" in out and "tools.nmap.concurrency" in out and "nmap limits" in out
    assert runtime.settings.tools.nmap.concurrency == 3

    code, out, _ = run(capsys, "reload", "--url", url, "--json")  # the same file again: nothing to change
    attempt = ReloadAttempt.model_validate_json(out)
    assert code == 0 and attempt.ok and attempt.changed == [] and attempt.by == local_user()

    code, out, _ = run(capsys, "status", "--url", url)
    assert code == 0
    assert f"config: {runtime.settings.digest()} from {path}" in out and "2 reloads" in out
    assert "last failed reload" not in out


@pytest.mark.parametrize(
    ("tools", "config", "key", "problem"),
    [
        ({}, ['allowed_networks = ["10.0.0.0/33"]'], "policy.allowed_networks", "10.0.0.0/33"),
        ({"nmap": ["colour = 1"]}, [], "tools.nmap.colour", "unknown key"),
        ({"nmap": ['concurrency = "many"']}, [], "tools.nmap.concurrency", "integer"),
    ],
    ids=["bad CIDR", "unknown key", "wrong type"],
)
def test_a_config_the_reload_refuses_changes_nothing_names_the_key_and_shows_in_status(
    daemon, tmp_path, capsys, tools, config, key, problem
):
    runtime, url, _ = daemon
    before = runtime.settings.digest()
    write_fake_config(tmp_path, config, tools=tools)

    code, out, err = run(capsys, "reload", "--url", url)
    assert code == 1 and out == ""
    assert key in err and problem in err and "invalid_config" in err

    assert runtime.settings.digest() == before  # the old config still serves
    outcome = runtime.call("nmap", ARGUMENTS["nmap"], timeout=TIMEOUT)
    assert outcome.ok, outcome

    status = OpsClient(url=url).status()
    assert status.config is not None and status.config.digest == before and status.config.reloads == 0
    failure = status.config.last_failure
    assert failure is not None and not failure.ok and key in (failure.error or "")
    code, out, _ = run(capsys, "status", "--url", url)
    line = next(line for line in out.splitlines() if line.startswith("last failed reload: "))
    assert key in line and " UTC by " in line


def test_labrecon_reload_finds_the_daemon_from_a_file_the_daemon_will_refuse(daemon, tmp_path, capsys):
    runtime, url, _ = daemon
    port = url.rsplit(":", 1)[1]
    # [policy] is broken; [http] still says where the daemon is, and the daemon is the one to judge the file.
    broken = ["allowed_networks = ['10.0.0.0/33']", "[http]", 'host = "127.0.0.1"', f"port = {port}"]
    write_fake_config(tmp_path, broken)
    code, _, err = run(capsys, "reload", "--config", str(tmp_path / "labrecon.toml"))
    assert code == 1 and "policy.allowed_networks" in err and "invalid_config" in err
    assert runtime.status().config.last_failure is not None


def test_a_reload_is_for_admins_and_needs_a_file_to_read(tmp_path):
    alice = {"authorization": "Bearer alice-token-0123456789abcdef"}
    path = write_fake_config(tmp_path, ["[[auth.tokens]]", 'name = "alice"', f'token = "{alice["authorization"][7:]}"'])
    with Runtime.start(path) as runtime, TestClient(build_ops_app(runtime, lambda: runtime.settings)) as client:
        assert client.post("/reload", headers=alice).status_code == 403
        assert client.post("/tools/nmap/disable", headers=alice).status_code == 403
        assert client.post("/tools/nmap/enable", headers=alice).status_code == 403
        assert client.post("/reload").status_code == 401
    settings = load_settings(write_fake_config(tmp_path))
    with Runtime.start(settings) as embedded, TestClient(build_ops_app(embedded, settings)) as client:
        refused = client.post("/reload")  # started from a settings object: there is no file to read again
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_config"


def test_a_reload_that_changes_the_port_needs_a_restart_and_the_daemon_keeps_its_port(tmp_path):
    path = write_fake_config(tmp_path, ["[http]", "port = 0"])
    runtime = Runtime.start(path)
    try:
        with running_daemon(runtime) as served:
            write_fake_config(tmp_path, ["[http]", "port = 18765"])
            answer = httpx.post(served.url + "/reload", timeout=TIMEOUT)
            assert answer.status_code == 200, answer.text
            attempt = ReloadAttempt.model_validate(answer.json())
            assert attempt.needs_restart == ["http.port"] and attempt.changed == []
            assert "needs restart: http.port" in render_reload(attempt)
            status = httpx.get(served.url + "/status", timeout=TIMEOUT).json()  # still where it was
            assert status["config"]["needs_restart"] == ["http.port"]
            assert runtime.settings.http.port == 0
    finally:
        runtime.stop(grace=2.0)


# --- labrecon tools disable | enable ------------------------------------------------------------------


def test_tools_disable_and_enable_from_the_command_line_show_in_status_and_readiness(daemon, capsys):
    runtime, url, _ = daemon
    code, out, _ = run(capsys, "tools", "disable", "nmap", "--url", url, "--reason", "new NSE scripts,\n installing")
    assert code == 0 and out.strip() == "nmap disabled; its running calls finish"
    refused = runtime.call("nmap", ARGUMENTS["nmap"], timeout=TIMEOUT)
    assert refused.error is not None and refused.error.error_type.value == "tool_disabled"
    assert refused.error.message.endswith("new NSE scripts, installing")

    code, out, _ = run(capsys, "status", "--url", url)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("nmap disabled since "))
    assert " UTC: nmap was disabled by " in line and line.endswith(": new NSE scripts, installing")
    code, out, _ = run(capsys, "status", "--url", url, "--json")
    nmap = json.loads(out)["tools"]["nmap"]
    assert nmap["state"] == "disabled" and nmap["disabled_since"] > 0

    assert run(capsys, "tools", "disable", "masscan", "--url", url)[0] == 0
    assert httpx.get(url + "/readyz").status_code == 200  # gobuster still serves
    assert run(capsys, "tools", "disable", "gobuster", "--url", url)[0] == 0
    assert httpx.get(url + "/readyz").status_code == 503
    assert run(capsys, "status", "--url", url)[0] == 1  # not ready: said by the exit code too

    for tool in ("nmap", "masscan", "gobuster"):
        code, out, _ = run(capsys, "tools", "enable", tool, "--url", url)
        assert code == 0 and out.strip() == f"{tool} enabled"
    assert httpx.get(url + "/readyz").status_code == 200
    assert runtime.call("nmap", ARGUMENTS["nmap"], timeout=TIMEOUT).ok


def test_tools_disable_refuses_bad_input_and_unknown_tools(daemon, capsys):
    _, url, _ = daemon
    for body, field in (({"reason": 7}, "reason"), ({"why": "x"}, "reason"), ({"reason": "x" * 501}, "reason")):
        answer = httpx.post(url + "/tools/nmap/disable", json=body)
        assert answer.status_code == 400 and answer.json()["field"] == field
    assert httpx.post(url + "/tools/nmap/disable", content=b"{").status_code == 400
    code, _, err = run(capsys, "tools", "disable", "hydra", "--url", url)
    assert code == 1 and "unknown tool 'hydra'" in err
    assert OpsClient(url=url).status().tools["nmap"].state == "running"


# --- SIGHUP and the file watcher on a real daemon -----------------------------------------------------


def reloaded(served: ServeProcess, count: int, *, failed: bool = False) -> dict[str, Any]:
    """The daemon's config status once it has applied `count` reloads (or seen a refused one)."""

    def seen() -> dict[str, Any] | None:
        with served.ops_client(timeout=TIMEOUT) as ops:
            config = ops.get("/status").json()["config"]
        done = config["last_failure"] is not None if failed else config["reloads"] >= count
        return config if done else None

    return wait_until(seen, TIMEOUT, interval=0.05, what="the reload")


def test_sighup_reloads_an_http_daemon_and_keeps_its_command_line_options(tmp_path):
    with serve_process(tmp_path) as served:
        with served.ops_client(timeout=TIMEOUT) as ops:
            before = ops.get("/status").json()["config"]["digest"]
        path = write_fake_config(tmp_path, tools={"nmap": ["concurrency = 3"]})

        served.process.send_signal(signal.SIGHUP)
        config = reloaded(served, 1)
        last = config["last_reload"]
        assert last["by"] == "SIGHUP" and last["old_digest"] == before and config["digest"] == last["new_digest"]
        assert last["changed"] == ["tools.nmap.concurrency"]
        assert config["needs_restart"] == []  # --port and --ops-socket are read again with the file
        assert config["source"] == str(path)

        write_fake_config(tmp_path, tools={"nmap": ["concurrency = 0"]})
        served.process.send_signal(signal.SIGHUP)
        config = reloaded(served, 1, failed=True)
        assert config["last_failure"]["by"] == "SIGHUP" and config["digest"] == last["new_digest"]
        with httpx.Client(base_url=served.url(), timeout=TIMEOUT) as http:
            body, headers = modern("tools/call", {"name": "nmap", "arguments": ARGUMENTS["nmap"]})
            answer = http.post("/mcp", json=body, headers=headers)
            assert answer.status_code == 200 and '"isError":false' in answer.text.replace(" ", "")

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(TIMEOUT) == 0
    warnings = [json.loads(line) for line in served.log.read_text().splitlines() if '"level": "warning"' in line]
    assert len(warnings) == 1, warnings
    message = warnings[0]["msg"]
    assert message.startswith("configuration not reloaded") and "tools.nmap.concurrency" in message
    assert "\n" not in message


def test_sighup_reloads_a_stdio_daemon(tmp_path):
    path = write_fake_config(tmp_path)
    ops = tmp_path / "ops.sock"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LABRECON_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "transports.cli", "serve", "--config", str(path), "--ops-socket", str(ops)],
        cwd=ROOT, env=environment, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: ops.exists() or process.poll() is not None, TIMEOUT, what="the ops socket")
        assert process.poll() is None
        write_fake_config(tmp_path, ['allowed_networks = ["10.0.0.0/8"]'])
        process.send_signal(signal.SIGHUP)
        served = ServeProcess(process, ops, tmp_path / "unused", tmp_path / "unused")
        config = reloaded(served, 1)
        assert config["last_reload"]["by"] == "SIGHUP" and config["last_reload"]["changed"] == [
            "policy.allowed_networks"
        ]
        assert process.stdin is not None
        process.stdin.close()  # EOF: the daemon ends as it always does
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_file_watcher_reloads_a_changed_file_and_the_new_log_level_applies(tmp_path):
    with serve_process(tmp_path, config=["[config]", "watch = true"]) as served:
        wait_until(lambda: "watching the config file for changes" in served.log.read_text(), TIMEOUT,
                   what="the watcher")
        assert '"level": "debug"' not in served.log.read_text()
        write_fake_config(tmp_path, ["[config]", "watch = true", "[logging]", 'level = "debug"'])

        config = reloaded(served, 1)
        assert config["last_reload"]["by"] == "file watcher"
        assert config["last_reload"]["changed"] == ["logging.level"]
        with httpx.Client(base_url=served.url(), timeout=TIMEOUT) as http:
            body, headers = modern("tools/call", {"name": "nmap", "arguments": ARGUMENTS["nmap"]})
            assert http.post("/mcp", json=body, headers=headers).status_code == 200
        wait_until(lambda: '"level": "debug"' in served.log.read_text(), TIMEOUT, what="a debug line")


@needs_private_network
def test_a_daemon_listening_beyond_loopback_refuses_a_reload_that_would_drop_its_token(tmp_path, capsys):
    token = "tok-0123456789abcdefghijklmnop"
    guarded = ["[auth]", f'token = "{token}"']
    # In a network namespace of its own, "every interface" is loopback alone: nothing is reachable from outside.
    with serve_process(tmp_path, "--host", "0.0.0.0", config=guarded, wrap=("unshare", "-n")) as served:
        write_fake_config(tmp_path)  # the token gone
        code, _, err = run(capsys, "reload", "--socket", str(served.ops), "--token", token)
        assert code == 1 and "auth.token" in err
        write_fake_config(tmp_path, ["[auth]", 'token = "short"'])
        code, _, err = run(capsys, "reload", "--socket", str(served.ops), "--token", token)
        assert code == 1 and "auth.token is shorter than 24 characters" in err
        code, out, _ = run(capsys, "status", "--socket", str(served.ops), "--token", token, "--json")
        assert code == 0 and json.loads(out)["config"]["reloads"] == 0  # the token still guards it
        assert token not in served.log.read_text()


def test_a_reload_that_changed_only_secrets_says_so_though_the_fingerprint_stays():
    attempt = ReloadAttempt(at=0.0, by="operator", ok=True, old_digest="abc", new_digest="abc", changed=["auth.token"])
    assert "same fingerprint: secrets changed" in render_reload(attempt)
    assert "applied:       auth.token" in render_reload(attempt)
