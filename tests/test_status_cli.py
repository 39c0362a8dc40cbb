"""`labrecon status`, `faults` and `tools` against a real server (TCP on 127.0.0.1, a Unix socket), and the tables."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import socket
import stat
import threading

import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from supervisor.config import Settings
from supervisor.status import BreakerStatus, CheckResult, HealthStatus, RuntimeInfo, Status, ToolStatus
from tests.helpers import wait_until
from tests.ops_support import TOKEN, start_runtime
from transports.cli import main
from transports.http.server import HttpServer, ServerStartError
from transports.ops.client import OpsClient, OpsUnreachable
from transports.ops.endpoints import build_ops_app, serve_ops_socket
from transports.ops.status_view import describe_fault, format_duration, render_faults, render_status, should_color

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("LABRECON_") or key == "NO_COLOR":
            monkeypatch.delenv(key)


@pytest.fixture
def runtime(make_runtime):
    return make_runtime()


@pytest.fixture
def server(runtime):
    with HttpServer.start(build_ops_app(runtime, runtime.settings), host="127.0.0.1", port=0) as srv:
        yield srv


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the server actor --------------------------------------------------------------------------


def test_port_zero_binds_an_ephemeral_port_on_loopback(server):
    assert server.address.host == "127.0.0.1"
    assert server.port and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/livez")
    assert json.loads(connection.getresponse().read()) == {"live": True}
    connection.close()


def test_a_taken_port_is_a_clear_start_error(server):
    with pytest.raises(ServerStartError, match=f"cannot listen on 127.0.0.1:{server.port}: Address already in use"):
        HttpServer.start(PlainTextResponse("x"), host="127.0.0.1", port=server.port)


def test_a_failing_app_startup_is_a_start_error_not_a_dead_thread():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("no database")
        yield  # pragma: no cover

    with pytest.raises(ServerStartError, match="stopped while starting"):
        HttpServer.start(Starlette(lifespan=lifespan), host="127.0.0.1", port=0)


def test_stop_lets_an_open_request_finish():
    entered, release = threading.Event(), threading.Event()

    async def slow(request):
        entered.set()
        await anyio.to_thread.run_sync(release.wait, 10.0)
        return PlainTextResponse("finished")

    srv = HttpServer.start(Starlette(routes=[Route("/slow", slow)]), host="127.0.0.1", port=0)
    answers: list[str] = []

    def request():
        connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        connection.request("GET", "/slow")
        answers.append(connection.getresponse().read().decode())
        connection.close()

    client = threading.Thread(target=request)
    client.start()
    assert entered.wait(10.0)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    wait_until(lambda: not accepts(srv.port), what="the listener to close")  # shutting down, request still open
    assert answers == [] and stopper.is_alive()
    release.set()
    stopper.join(20.0)
    client.join(10.0)
    assert answers == ["finished"]
    assert not srv.running


def accepts(port: int | None) -> bool:
    assert port is not None
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_server_that_ends_by_itself_tells_its_owner(monkeypatch):
    from transports.http import server as server_module

    crash = threading.Event()

    async def main_loop(self):
        await anyio.to_thread.run_sync(crash.wait, 10.0)
        raise RuntimeError("event loop broke")

    monkeypatch.setattr(server_module._NotifyingServer, "main_loop", main_loop)
    exits: list[BaseException | None] = []
    told = threading.Event()

    def on_exit(error: BaseException | None) -> None:
        exits.append(error)
        told.set()

    srv = HttpServer.start(PlainTextResponse("x"), host="127.0.0.1", port=0, on_exit=on_exit)
    assert srv.running
    crash.set()
    assert told.wait(10.0)
    assert [str(error) for error in exits] == ["event loop broke"]
    wait_until(lambda: not srv.running, what="the actor to stop")
    assert not accepts(srv.port)


def test_unix_socket_is_owner_only_and_removed_on_stop(tmp_path, runtime):
    path = tmp_path / "ops.sock"
    srv = HttpServer.start(build_ops_app(runtime, runtime.settings), uds=path)
    try:
        assert srv.url == f"unix:{path}"
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(ServerStartError, match="another server is listening there"):
            HttpServer.start(PlainTextResponse("x"), uds=path)
    finally:
        srv.stop()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_but_a_regular_file_is_not(tmp_path):
    stale = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    with HttpServer.start(PlainTextResponse("x"), uds=stale) as srv:
        assert OpsClient(url=srv.url).request("GET", "/") == "x"
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(ServerStartError, match="exists and is not a socket"):
        HttpServer.start(PlainTextResponse("x"), uds=regular)
    assert regular.read_text() == "keep me"


# --- labrecon status -------------------------------------------------------------------------------


def test_status_over_tcp(capsys, server, runtime):
    runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}, timeout=30)
    code, out, err = run(capsys, "status", "--url", server.url)
    assert (code, err) == (0, "")
    assert "\x1b[" not in out  # captured stdout is not a terminal
    lines = out.splitlines()
    assert lines[0].startswith("labrecon ") and f"config {runtime.settings.digest()}" in lines[0]
    assert re.fullmatch(r"health: (healthy|degraded), ready", lines[1])  # degraded: a busy test machine's CPU
    header = next(line for line in lines if line.startswith("TOOL"))
    nmap = next(line for line in lines if line.startswith("nmap "))
    assert header.split() == ["TOOL", "STATE", "BREAKER", "IN-FLIGHT", "QUEUED", "P50", "P95", "OK", "FAILED",
                              "RESTARTS", "LAST", "RESTART"]
    cells = nmap.split()
    assert cells[:5] == ["nmap", "running", "closed", "0", "0"]
    assert cells[7:] == ["1", "0", "0", "-"]
    assert any(line.startswith("CHECK ") for line in lines)
    assert any(re.match(r"tools +ok +at least one tool serving", line) for line in lines)


def test_status_json_is_the_status_model(capsys, server):
    code, out, _ = run(capsys, "status", "--url", server.url, "--json")
    assert code == 0
    assert set(Status.model_validate_json(out).tools) == {"nmap", "masscan", "gobuster"}


def test_status_over_a_unix_socket(capsys, tmp_path, runtime):
    path = tmp_path / "ops.sock"
    with HttpServer.start(build_ops_app(runtime, runtime.settings), uds=path):
        code, out, _ = run(capsys, "status", "--socket", str(path))
        assert code == 0 and "nmap" in out
        code, out, _ = run(capsys, "status", "--url", f"unix:{path}", "--json")
        assert code == 0 and json.loads(out)["health"]["ready"] is True


def test_status_finds_the_ops_socket_from_the_config(capsys, tmp_path):
    path = tmp_path / "ops.sock"
    config = tmp_path / "labrecon.toml"
    config.write_text(f'[http]\nops_socket = "{path}"\n')
    rt = start_runtime(tmp_path, http={"ops_socket": str(path)})
    try:
        assert serve_ops_socket(rt, Settings()) is None  # none configured: nothing served
        srv = serve_ops_socket(rt, rt.settings)
        assert srv is not None and srv.url == f"unix:{path}"
        try:
            code, out, _ = run(capsys, "status", "--config", str(config))
        finally:
            srv.stop()
    finally:
        rt.stop(grace=1.0)
    assert code == 0 and "nmap" in out


def test_status_of_a_daemon_that_is_not_ready_exits_1(capsys, tmp_path):
    rt = start_runtime(tmp_path, tools={"masscan": {"enabled": False}, "gobuster": {"enabled": False}},
                       supervisor={"max_restarts": 0})
    try:
        rt.inject(tool="nmap", kind="crash", count=1)
        rt.call("nmap", {"target": "10.0.0.5", "ports": "22"}, timeout=30)
        wait_until(lambda: rt.status().tools["nmap"].state == "failed", what="nmap failed")
        with HttpServer.start(build_ops_app(rt, rt.settings), port=0) as srv:
            code, out, _ = run(capsys, "status", "--url", srv.url)
            assert code == 1
            assert "health: unhealthy, NOT READY" in out
            nmap = next(line for line in out.splitlines() if line.startswith("nmap "))
            assert nmap.split()[1] == "failed" and "failed:" in nmap
            code, out, _ = run(capsys, "tools", "reset", "nmap", "--url", srv.url)
            assert (code, out) == (0, "nmap reset and serving again\n")
            assert run(capsys, "status", "--url", srv.url)[0] == 0
    finally:
        rt.stop(grace=1.0)


def test_an_unreachable_daemon_exits_4(capsys, tmp_path):
    code, out, err = run(capsys, "status", "--socket", str(tmp_path / "nobody.sock"))
    assert code == 4 and out == ""
    assert err.startswith(f"labrecon: cannot reach labrecon at {tmp_path / 'nobody.sock'}: ")


def test_something_else_listening_is_not_mistaken_for_labrecon(capsys):
    with HttpServer.start(JSONResponse({"hello": "world"}), port=0) as srv:
        code, out, err = run(capsys, "status", "--url", srv.url)
        assert code == 4 and out == ""
        assert err == f"labrecon: {srv.url} did not answer with a labrecon status\n"
        code, _, err = run(capsys, "faults", "list", "--url", srv.url)
        assert code == 4 and "did not answer like labrecon (no 'faults' in the reply)" in err


def test_a_bad_url_exits_2(capsys):
    code, _, err = run(capsys, "status", "--url", "ftp://127.0.0.1:21")
    assert code == 2 and "not an http(s):// or unix: address" in err


# --- tokens from the command line ------------------------------------------------------------------


@pytest.fixture
def guarded_server(tmp_path):
    rt = start_runtime(tmp_path, auth={"token": TOKEN})
    with HttpServer.start(build_ops_app(rt, rt.settings), port=0) as srv:
        yield srv
    rt.stop(grace=1.0)


def test_a_token_protected_daemon_refuses_without_the_token(capsys, guarded_server):
    code, out, err = run(capsys, "status", "--url", guarded_server.url)
    assert code == 4 and out == ""
    assert err == "labrecon: a bearer token is required (401 unauthorized)\n"


def test_a_wrong_token_is_refused_and_never_printed(capsys, guarded_server):
    code, out, err = run(capsys, "faults", "list", "--url", guarded_server.url, "--token", "wrong-" + TOKEN)
    assert code == 4
    assert TOKEN not in out + err
    assert "valid bearer token is required" in err


def test_the_token_comes_from_the_flag_or_the_environment(capsys, monkeypatch, guarded_server):
    assert run(capsys, "status", "--url", guarded_server.url, "--token", TOKEN)[0] == 0
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", TOKEN)
    code, out, _ = run(capsys, "status", "--url", guarded_server.url)
    assert code == 0 and TOKEN not in out


def test_the_token_and_address_come_from_the_config(capsys, tmp_path, guarded_server):
    config = tmp_path / "client.toml"
    config.write_text(f'[http]\nport = {guarded_server.port}\n[auth]\ntoken = "{TOKEN}"\n')
    code, out, _ = run(capsys, "status", "-c", str(config))
    assert code == 0 and "nmap" in out


# --- labrecon faults and tools -----------------------------------------------------------------------


def test_inject_list_and_clear_faults(capsys, server, runtime):
    code, out, _ = run(
        capsys, "faults", "inject", "--url", server.url, "--tool", "nmap", "--kind", "crash", "--count", "2"
    )
    assert (code, out) == (0, "added fault 1: nmap crash, next 2\n")
    code, out, _ = run(capsys, "faults", "inject", "--url", server.url, "--tool", "masscan", "--kind", "delay",
                       "--probability", "0.5", "--seed", "7", "--delay-sec", "2.5")
    assert (code, out) == (0, "added fault 2: masscan delay, p=0.5 seed 7, 2.5s delay\n")
    assert [rule["id"] for rule in runtime.faults()] == [1, 2]

    code, out, _ = run(capsys, "faults", "list", "--url", server.url)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["FAULT", "TOOL", "KIND", "TRIGGER", "DETAIL", "FIRED/SEEN", "ACTIVE"]
    assert lines[1].split() == ["1", "nmap", "crash", "next", "2", "-", "0/0", "yes"]
    code, out, _ = run(capsys, "faults", "list", "--url", server.url, "--json")
    assert [rule["kind"] for rule in json.loads(out)] == ["crash", "delay"]

    assert run(capsys, "faults", "clear", "--url", server.url, "--id", "1")[1] == "cleared 1 fault rule\n"
    code, out, err = run(capsys, "faults", "clear", "--url", server.url, "--id", "1")
    assert code == 1 and err == "labrecon: no fault rule with id 1 (404 not_found)\n"
    assert run(capsys, "faults", "clear", "--url", server.url)[1] == "cleared 1 fault rule\n"
    assert run(capsys, "faults", "list", "--url", server.url)[1] == "no fault rules\n"


def test_a_bad_fault_is_explained(capsys, server):
    code, out, err = run(capsys, "faults", "inject", "--url", server.url, "--tool", "nmap", "--kind", "crash",
                         "--seed", "3")
    assert code == 1 and out == ""
    assert err.startswith("labrecon: ") and "seed goes with probability" in err and err.endswith("(400 invalid)\n")
    code, _, err = run(capsys, "faults", "inject", "--url", server.url, "--tool", "hydra", "--kind", "crash")
    assert code == 1 and "unknown tool 'hydra'" in err


def test_conflicting_triggers_are_a_usage_error(capsys, server):
    with pytest.raises(SystemExit) as caught:
        main([
            "faults", "inject", "--url", server.url, "--tool", "nmap", "--kind", "crash", "--count", "1", "--every", "2"
        ])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_tools_restart_and_breaker(capsys, server, runtime):
    code, out, _ = run(capsys, "tools", "restart", "nmap", "--url", server.url)
    assert (code, out) == (0, "nmap restarting (incarnation 1 is being replaced)\n")
    wait_until(lambda: runtime.status().tools["nmap"].incarnation == 2, what="nmap replaced")
    code, out, _ = run(capsys, "tools", "breaker", "gobuster", "open", "--url", server.url)
    assert (code, out) == (0, "gobuster breaker forced open\n")
    wait_until(lambda: runtime.status().tools["gobuster"].breaker.state == "open", what="breaker open")
    code, out, _ = run(capsys, "status", "--url", server.url)
    gobuster = next(line for line in out.splitlines() if line.startswith("gobuster "))
    assert gobuster.split()[2] == "open"
    code, _, err = run(capsys, "tools", "restart", "hydra", "--url", server.url)
    assert code == 1 and "unknown tool 'hydra'; available: gobuster, masscan, nmap" in err


# --- rendering ------------------------------------------------------------------------------------


def make_status(**tool_overrides) -> Status:
    def tool(name, **fields):
        base = {"name": name, "state": "running", "incarnation": 1, "restarts": 0,
                "breaker": BreakerStatus(state="closed"), "in_flight": 0, "queued": 0}
        base.update(fields)
        return ToolStatus(**base)

    tools = {
        "nmap": tool("nmap", in_flight=2, queued=3, restarts=2, incarnation=3,
                     retiring=1, retries={"actor_restarted": 2},
                     last_restart_reason="crash: killed by SIGSEGV", calls={"ok": 40, "timeout": 2, "validation": 1},
                     p50_sec=1.234, p95_sec=75.0),
        "masscan": tool("masscan", state="failed", restarts=5, failed_reason="5 restarts in 60s " + "x" * 80,
                        breaker=BreakerStatus(state="open", consecutive_failures=5, retry_after_sec=12.0)),
        "gobuster": tool("gobuster", state="restarting", stashed=4,
                         breaker=BreakerStatus(state="closed", consecutive_failures=2)),
    }
    checks = [
        CheckResult(name="system", ok=True, critical=False, detail="ok"),
        CheckResult(name="actor:masscan", ok=False, critical=False, detail="failed: 5 restarts in 60s"),
        CheckResult(name="tools", ok=True, detail="at least one tool serving"),
    ]
    return Status(
        runtime=RuntimeInfo(version="0.1.0", pid=4242, uptime_sec=7384.0, config_digest="abc123def456"),
        tools=tools,
        faults=[{"id": 3, "tool": "nmap", "kind": "flood", "flood_bytes": 200 << 20, "seen": 4, "fired": 1,
                 "active": True, "count": 2}],
        health=HealthStatus(live=True, ready=True, status="degraded", checks=checks),
        sessions={"sse": 1, "streamable_http": 2},
    )


def test_the_table_reads_at_a_glance():
    text = render_status(make_status())
    lines = text.splitlines()
    assert lines[0] == "labrecon 0.1.0  pid 4242  up 2h03m  config abc123def456"
    assert lines[1] == "health: degraded, ready"
    assert lines[2] == "sessions: sse 1, streamable_http 2"
    header = lines[4]
    nmap, masscan, gobuster = lines[5:8]
    columns = [
        "TOOL", "STATE", "BREAKER", "IN-FLIGHT", "QUEUED", "P50", "P95", "OK", "FAILED", "RESTARTS", "LAST RESTART"
    ]
    starts = [header.index(name) for name in columns]
    assert starts == sorted(starts)
    # Every value starts under its header.
    for row, values in (
        (nmap, ["nmap", "running", "closed", "2 (1 retiring)", "3", "1.2s", "1m15s", "40", "3", "2 (2 calls retried)",
                "crash: killed by SIGSEGV"]),
        (masscan, ["masscan", "failed", "open 12.0s", "0", "0", "-", "-", "0", "0", "5", "failed: 5 restarts"]),
    ):
        for start, value in zip(starts, values, strict=True):
            assert row[start:].startswith(value), (row, value)
    assert "+4 stashed" in gobuster and "closed (2 fail)" in gobuster
    assert "..." in masscan and len(max(lines, key=len)) < 200  # long reasons are clipped
    assert "actor:masscan  warn    failed: 5 restarts in 60s" in text
    assert any(line.split()[:4] == ["3", "nmap", "flood", "next"] and "200 MiB" in line for line in lines)
    assert all(line == line.rstrip() for line in lines)


def test_colour_changes_no_alignment():
    status = make_status()
    plain = render_status(status, color=False)
    coloured = render_status(status, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[31mfailed\x1b[0m" in coloured and "\x1b[32mrunning\x1b[0m" in coloured
    assert "\x1b[33mdegraded\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain


def test_not_ready_is_loud():
    status = make_status()
    status.health.ready = False
    status.health.status = "unhealthy"
    assert "health: unhealthy, NOT READY" in render_status(status)
    assert "\x1b[31mNOT READY\x1b[0m" in render_status(status, color=True)


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize(
    ("tty", "env", "expected"),
    [(True, {}, True), (False, {}, False), (True, {"NO_COLOR": "1"}, False), (True, {"NO_COLOR": ""}, True)],
)
def test_colour_only_on_a_terminal_without_no_color(tty, env, expected):
    assert should_color(Stream(tty), env) is expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.0123, "12ms"), (0.9994, "999ms"), (4.25, "4.2s"), (59.9, "59.9s"), (192, "3m12s"),
     (7384, "2h03m"), (273600, "3d04h")],
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_fault_descriptions():
    assert describe_fault({"id": 1, "tool": "nmap", "kind": "crash", "every": 3}) == "fault 1: nmap crash, every 3"
    hang = {"id": 2, "tool": "nmap", "kind": "hang", "delay_sec": 1.0}
    assert describe_fault(hang) == "fault 2: nmap hang, every call"
    assert render_faults([]) == "no fault rules"
    spent = render_faults(
        [{"id": 1, "tool": "nmap", "kind": "fail", "count": 1, "fired": 1, "seen": 1, "active": False}]
    )
    assert spent.splitlines()[1].split()[-1] == "spent"


def test_client_errors_name_the_address_but_never_the_token(tmp_path):
    client = OpsClient(socket_path=tmp_path / "gone.sock", token=TOKEN)
    with pytest.raises(OpsUnreachable) as caught:
        client.status()
    assert str(tmp_path / "gone.sock") in str(caught.value) and TOKEN not in str(caught.value)
