"""No process a tool starts outlives its call or the server, not even one that left the tool's process group.

Through the embedding API and through `labrecon serve` over stdio, on the fake
nmap's `detach` mode: a process daemonized the classic way (fork, setsid, fork).
"""

from __future__ import annotations

import signal
import subprocess
import threading

import psutil

from actors.results import ErrorType
from tests.fakes.install import install_fake
from tests.helpers import process_alive, wait_until
from tests.runtimes import scan_calls
from tests.test_mcp_stdio_e2e import LABRECON, start_calls, write_config


def serve(config) -> subprocess.Popen:
    return subprocess.Popen(
        [LABRECON, "serve", "--config", str(config), "--grace", "0.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_a_call_that_times_out_takes_what_its_tool_detached_with_it(make_runtime, subreaper):
    runtime = make_runtime(tools={"nmap": {"kill_grace_sec": 0.5, "scenario": {"mode": "detach"}}})
    outcome = runtime.call("nmap", {"target": "10.0.0.5", "timeout_sec": 1})
    assert outcome.error_type is ErrorType.TIMEOUT
    (call,) = scan_calls(runtime.settings.tools.nmap.binary)
    assert not process_alive(call["pid"]) and not process_alive(call["detached_pid"])


def test_stopping_the_runtime_ends_what_a_running_call_detached(make_runtime, subreaper):
    runtime = make_runtime(tools={"nmap": {"scenario": {"mode": "detach"}}})
    nmap = runtime.settings.tools.nmap.binary
    answers = []
    caller = threading.Thread(target=lambda: answers.append(runtime.call("nmap", {"target": "10.0.0.5"})))
    caller.start()
    (call,) = wait_until(lambda: scan_calls(nmap), what="the scan to start")
    assert process_alive(call["detached_pid"])
    runtime.stop(grace=0)
    caller.join(10)
    assert answers[0].error_type is ErrorType.CANCELLED
    assert not process_alive(call["detached_pid"])


def test_sigterm_to_serve_ends_every_process_of_the_calls_it_cancels(tmp_path):
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="detach")
    proc = serve(write_config(tmp_path, binary=str(nmap)))
    start_calls(proc, 1)
    (call,) = wait_until(lambda: scan_calls(nmap), what="the scan to start")
    leftovers = descendants(proc.pid)
    assert call["detached_pid"] in {p.pid for p in leftovers}  # re-parented to serve, not to init
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    assert '"error_type":"cancelled"' in proc.stdout.read().decode()
    assert proc.wait(timeout=20) == 0
    assert not [p.pid for p in leftovers if process_alive(p.pid)]


def test_serve_ends_at_exit_a_detached_process_its_run_could_not_trace(tmp_path):
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="detach", detached_unmarked=True, parent_exits=True)
    proc = serve(write_config(tmp_path, binary=str(nmap)))
    start_calls(proc, 1)
    assert proc.stdin is not None and proc.stdout is not None
    assert '"isError":false' in proc.stdout.readline().decode()
    (call,) = scan_calls(nmap)
    assert process_alive(call["detached_pid"])  # it dropped the run's environment, so only the exit finds it
    proc.stdin.close()
    assert proc.wait(timeout=20) == 0
    assert not process_alive(call["detached_pid"])
