"""A `labrecon serve` killed with SIGKILL mid-scan leaves no process behind, and its store survives it.

Two mechanisms, each shown on its own: the daemon's watchdog ends the runs the moment the daemon dies,
and, should the watchdog be gone too, the next start ends them, reading their groups from the store.
The store is read back through `Runtime.start(...).scans`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.api import Caller
from actors.watchdog import Watchdog
from supervisor import Runtime
from supervisor.scans.records import INTERRUPTED, ScanStatus
from tests.fakes.install import install_fake, set_scenario
from tests.helpers import process_alive, wait_until
from tests.runtimes import fake_config, scan_calls

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups are read from /proc")

LABRECON = str(Path(sys.executable).with_name("labrecon"))
INIT = {
    "jsonrpc": "2.0", "id": 0, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


class StdioDaemon:
    """A `labrecon serve` over stdio, spoken to in raw JSON-RPC lines."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [LABRECON, "serve", "--config", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.send(INIT)
        assert self.read(lambda message: message.get("id") == 0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def read(self, wanted: Any) -> dict[str, Any]:
        """The first message `wanted` accepts; the ones before it are skipped."""
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            message: dict[str, Any] = json.loads(line)
            if wanted(message):
                return message
        raise AssertionError("the daemon closed stdout")

    def call(self, call_id: int, target: str) -> dict[str, Any]:
        self.start_call(call_id, target)
        return self.read(lambda message: message.get("id") == call_id)

    def start_call(self, call_id: int, target: str) -> None:
        params = {"name": "nmap", "arguments": {"target": target, "ports": "22"}, "_meta": {"progressToken": call_id}}
        self.send({"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params})

    def wait_spawned(self, call_id: int) -> None:
        """Until the call's process runs: 'started' is reported only once the store holds its process group."""

        def started(message: dict[str, Any]) -> bool:
            params = message.get("params", {})
            return bool(message.get("method") == "notifications/progress" and params.get("progressToken") == call_id
                        and "started" in params.get("message", ""))

        self.read(started)

    def watchdog(self) -> psutil.Process:
        (watchdog,) = [child for child in psutil.Process(self.process.pid).children() if _is_watchdog(child)]
        return watchdog

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            assert pipe is not None
            pipe.close()


@contextmanager
def daemon_on_fakes(tmp_path: Path) -> Iterator[tuple[StdioDaemon, Path, dict[str, Any]]]:
    """A stdio daemon on fake scanners with its store in `tmp_path`; (daemon, the fake nmap, the config)."""
    config = fake_config(tmp_path / "fakes", scans={"path": str(tmp_path / "scans.sqlite3")})
    lines = ["[policy]", "dns = false", "[scans]", f'path = "{tmp_path / "scans.sqlite3"}"']
    for tool, settings in config["tools"].items():
        lines += [f"[tools.{tool}]", f'binary = "{settings["binary"]}"']
    path = tmp_path / "labrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    daemon = StdioDaemon(path)
    try:
        yield daemon, Path(config["tools"]["nmap"]["binary"]), config
    finally:
        if daemon.process.poll() is None:
            daemon.kill()


@contextmanager
def ended_at_exit(pids: list[int]) -> Iterator[None]:
    """Whatever the test proves, none of these processes outlives it, nor stays a zombie of this subreaper."""
    try:
        yield
    finally:
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for orphan in psutil.Process().children():  # whatever else of the dead daemon came here, reaped as init would
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if orphan.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(orphan.pid, 0)


def test_a_daemon_killed_mid_scan_keeps_finished_scans_fails_the_running_one_and_leaves_no_process(
    tmp_path, subreaper
):
    with daemon_on_fakes(tmp_path) as (daemon, nmap, config):
        finished = [daemon.call(i, f"10.0.0.{i}") for i in (1, 2, 3)]
        assert all(not answer["result"]["isError"] for answer in finished)
        set_scenario(nmap, mode="slow", delay_sec=600, steps=1)
        daemon.start_call(4, "10.0.0.4")
        daemon.wait_spawned(4)
        (slow,) = wait_until(lambda: [c for c in scan_calls(nmap) if c["mode"] == "slow"], what="the slow scan")
        with ended_at_exit([slow["pid"]]):
            watchdog = daemon.watchdog()
            daemon.kill()
            # Nothing has started again yet: the watchdog alone ends the scan's process, then itself.
            wait_until(lambda: not process_alive(slow["pid"]), what="the slow scan's process to die with the daemon")
            wait_until(lambda: not process_alive(watchdog.pid), what="the watchdog to end")

            runtime = Runtime.start(config)
            try:
                me = Caller.local()
                scans, _ = runtime.scans.page(me)
                assert [scan.target for scan in scans] == ["10.0.0.4", "10.0.0.3", "10.0.0.2", "10.0.0.1"]
                interrupted, *done = scans
                assert interrupted.status is ScanStatus.FAILED and interrupted.error_type == INTERRUPTED
                for scan in done:
                    assert scan.status is ScanStatus.COMPLETED
                    outcome = runtime.scans.outcome(me, scan.scan_id)
                    assert outcome is not None and outcome.ok and outcome.resolved_targets == [scan.target]
                    assert "<nmaprun" in (runtime.scans.raw(me, scan.scan_id) or "")
            finally:
                runtime.stop(grace=2.0)


def test_runs_left_when_the_watchdog_died_too_are_ended_by_the_next_start(tmp_path, subreaper):
    # The watchdog is killed first: then only the store knows the group, leader and child alike.
    # Orphans come back to this test (a subreaper), which reaps them as init would.
    with daemon_on_fakes(tmp_path) as (daemon, nmap, config):
        set_scenario(nmap, mode="hang_with_child")
        daemon.start_call(1, "10.0.0.1")
        daemon.wait_spawned(1)
        call = wait_until(lambda: [c for c in scan_calls(nmap) if c.get("child_pid")], what="the fake's child")[0]
        leader, child = call["pid"], call["child_pid"]
        with ended_at_exit([leader, child]):
            watchdog = daemon.watchdog()
            watchdog.kill()
            wait_until(lambda: not process_alive(watchdog.pid), what="the watchdog to die")
            daemon.kill()
            assert process_alive(leader) and process_alive(child) and os.getpgid(child) == leader

            runtime = Runtime.start(config)
            try:
                wait_until(lambda: not (process_alive(leader) or process_alive(child)), what="the next start")
                (scan,) = runtime.scans.page(Caller.local())[0]
                assert scan.status is ScanStatus.FAILED and scan.error_type == INTERRUPTED
            finally:
                runtime.stop(grace=2.0)


def test_the_watchdog_ends_the_groups_still_listed_when_its_daemon_dies_and_no_others(tmp_path):
    script = (
        "import subprocess, sys\n"
        "from actors.containment import process_start_ticks\n"
        "from actors.watchdog import Watchdog\n"
        "watchdog = Watchdog()\n"
        "kept, ended = (subprocess.Popen([sys.argv[1], '10.0.0.1'], start_new_session=True) for _ in range(2))\n"
        "for key, run in (('kept', kept), ('ended', ended)):\n"
        "    watchdog.watch(key, run.pid, process_start_ticks(run.pid), None)\n"
        "watchdog.forget('kept')  # its run is over, as far as the daemon knows\n"
        "print(watchdog.pid, kept.pid, ended.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    nmap = install_fake(tmp_path / "fakes", "nmap", mode="hang")
    root = Path(__file__).resolve().parent.parent
    secret = {**os.environ, "LABRECON_AUTH__TOKEN": "a-token-the-watchdog-must-not-hold-0123"}
    with subprocess.Popen(
        [sys.executable, "-c", script, str(nmap)], cwd=root, env=secret, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as host:
        assert host.stdout is not None
        watchdog, kept, ended = (int(pid) for pid in host.stdout.readline().split())
        with ended_at_exit([kept, ended, watchdog]):
            # It gets a minimal environment: nothing of the daemon's, its tokens least of all.
            assert not any(key.startswith("LABRECON_") for key in psutil.Process(watchdog).environ())
            host.kill()  # as SIGKILL takes a daemon: no goodbye
            host.wait(10)
            wait_until(lambda: not process_alive(ended), what="the listed run to be ended")
            wait_until(lambda: not process_alive(watchdog), what="the watchdog to end")
            assert process_alive(kept)


def test_the_watchdog_imports_nothing_from_the_daemons_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("raise SystemExit('a module of the daemon directory ran')\n")
    watchdog = Watchdog()
    watchdog.watch("gone", 2**22 + 1, 1, None)  # no such process: nothing to end
    assert watchdog.close(timeout=30) == 0


def test_a_stuck_watchdog_never_stalls_the_daemon_and_one_that_died_does_not_break_its_stop():
    watchdog = Watchdog()
    try:
        os.kill(watchdog.pid, signal.SIGSTOP)
        for n in range(5000):  # far more than a pipe holds
            watchdog.watch(f"run-{n}", n + 2, 1, None)  # returns at once: a full pipe means a lost watchdog
        os.kill(watchdog.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(watchdog.pid, signal.SIGCONT)
    assert watchdog.close(timeout=10) == -signal.SIGKILL  # and no BrokenPipeError on the way


def _is_watchdog(process: psutil.Process) -> bool:
    """Whether `process` is the daemon's watchdog; a child that exits meanwhile (a version query) is not."""
    try:
        return "actors.watchdog" in process.cmdline()
    except psutil.NoSuchProcess:
        return False
