"""The subprocess runner against real processes: the fakes and small scripts written per test."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from actors.containment import is_subreaper, set_subreaper
from actors.runner import MAX_LINE_BYTES, MINIMAL_ENV, ProcessRun, RunRequest, RunResult
from tests.fakes.install import install_fake, read_calls
from tests.helpers import process_alive, wait_until


@pytest.fixture(params=["pidfd", "polling"])
def exit_watch(request, monkeypatch):
    """Run a test with the leader's exit seen through a pidfd, and again as on a kernel without pidfds."""
    if request.param == "polling":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    return request.param


def script(directory: Path, body: str, name: str = "script") -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def run(argv, timeout_sec: float = 10.0, on_line=None, **limits) -> RunResult:
    return ProcessRun(RunRequest([str(a) for a in argv], timeout_sec=timeout_sec, **limits), on_line=on_line).run()


def run_in_thread(process_run: ProcessRun) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(process_run.run()))
    thread.start()
    return thread, results


# Long enough for a fake to start and set itself up even on a loaded machine, so
# that a timeout meets the fake's scenario rather than the Python interpreter
# still starting.
READY_SEC = 1.5


def assert_gone(*pids: int) -> None:
    # A killed process may still be finishing its exit when the run returns.
    wait_until(lambda: not [pid for pid in pids if process_alive(pid)], timeout=2, what=f"processes {pids} to be gone")


# --------------------------------------------------------------------------- ordinary runs


def test_a_fake_scan_runs_to_completion(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap", ports=[22, 80])
    result = run([nmap, "-p", "22,80,443", "-oX", "-", "10.0.0.5"])
    assert result.returncode == 0 and result.signal is None
    assert result.stdout.startswith(b'<?xml version="1.0"') and result.stdout.endswith(b"</nmaprun>\n")
    assert b'portid="22"' in result.stdout
    assert not (result.timed_out or result.cancelled or result.stdout_truncated or result.stderr_truncated)
    assert result.spawn_error is None
    assert result.pid == read_calls(nmap)[0]["pid"]


def test_exit_status_and_stderr_are_reported(tmp_path):
    result = run([script(tmp_path, "echo out; echo err >&2; exit 3\n")])
    assert (result.returncode, result.signal) == (3, None)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


def test_a_failing_tool_keeps_its_message(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="fail", exit_code=2)
    result = run([nmap, "10.0.0.5"])
    assert result.returncode == 2
    assert b"QUITTING!" in result.stderr


def test_a_signal_death_is_reported_as_the_signal(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="crash")
    result = run([nmap, "-p", "22", "-oX", "-", "10.0.0.5"])
    assert result.returncode is None
    assert result.signal == signal.SIGSEGV
    assert result.stdout.startswith(b"<?xml") and b"</nmaprun>" not in result.stdout


def test_arguments_reach_the_program_verbatim_without_a_shell(tmp_path):
    result = run(["/bin/echo", "$HOME; echo hi", "`id`", "*"])
    assert result.stdout == b"$HOME; echo hi `id` *\n"


def test_stdin_is_empty(tmp_path):
    result = run(["/bin/cat"], timeout_sec=5)
    assert result.returncode == 0 and result.stdout == b"" and not result.timed_out


def environment(result: RunResult) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.decode().splitlines())


def test_the_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("LABRECON_SECRET_TOKEN", "do-not-leak")
    env = environment(run(["/usr/bin/env"]))
    assert set(env) == {"PATH", "LANG", "HOME"}
    assert {key: env[key] for key in MINIMAL_ENV} == dict(MINIMAL_ENV)
    assert env["HOME"] != os.environ.get("HOME")


def test_extra_variables_add_to_the_minimal_environment():
    env = environment(run(["/usr/bin/env"], env={"NMAPDIR": "/opt/nmap"}))
    assert env == {**MINIMAL_ENV, "NMAPDIR": "/opt/nmap", "HOME": env["HOME"]}


def test_each_run_gets_its_own_empty_home_and_working_directory(tmp_path):
    planter = script(
        tmp_path,
        'echo "$HOME"; pwd; stat -c %a .; ls -A\n'
        'mkdir "$HOME/.nmap" && echo "planted" > "$HOME/.nmap/script.nse" && echo "left" > here\n',
    )
    first, second = (run([planter]).stdout.decode().splitlines() for _ in range(2))
    home, cwd, mode, *listing = first
    assert cwd == home and home != os.environ.get("HOME")
    assert mode == "700" and listing == []
    assert second[0] != home and second[3:] == []  # nothing the first run left is there for the second
    assert not Path(home).exists() and not Path(second[0]).exists()


def test_a_given_working_directory_keeps_home_private(tmp_path):
    lines = run(["/bin/sh", "-c", 'pwd; echo "$HOME"'], cwd=str(tmp_path)).stdout.decode().splitlines()
    assert lines[0] == str(tmp_path) and lines[1] != str(tmp_path)
    assert not Path(lines[1]).exists()


def test_the_run_directory_goes_with_a_timed_out_run(tmp_path):
    program = script(tmp_path, 'echo "$HOME"; touch "$HOME/file"; exec sleep 60\n')
    result = run([program], timeout_sec=READY_SEC)
    assert result.timed_out
    assert not Path(result.stdout.decode().strip()).exists()


def test_the_run_directory_goes_with_a_cancelled_run(tmp_path):
    program = script(tmp_path, 'echo "$HOME"; touch "$HOME/file"; exec sleep 60\n')
    homes: list[str] = []

    def on_line(line: str) -> None:
        homes.append(line)
        process_run.cancel()

    process_run = ProcessRun(RunRequest([program], timeout_sec=60), on_line=on_line)
    result = process_run.run()
    assert result.cancelled and homes
    assert not Path(homes[0]).exists()


def test_a_run_that_never_starts_leaves_no_directory(tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert run([tmp_path / "no-such-scanner"]).spawn_error
    cancelled = ProcessRun(RunRequest(["/bin/true"], timeout_sec=5))
    cancelled.cancel()
    assert cancelled.run().cancelled
    assert run(["/bin/true"]).returncode == 0
    assert list(temporary.iterdir()) == []


def test_the_program_leads_its_own_session_and_group():
    result = run([sys.executable, "-c", "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"])
    pid, pgid, sid = map(int, result.stdout.split())
    assert pid == pgid == sid == result.pid
    assert pgid != os.getpgid(0)


def test_concurrent_runs_on_many_threads_stay_apart(tmp_path):
    nmaps = [install_fake(tmp_path / str(i), "nmap", ports=[1000 + i]) for i in range(8)]
    runs = [ProcessRun(RunRequest([str(n), "-p", f"{1000 + i}", "-oX", "-", "10.0.0.5"], timeout_sec=20))
            for i, n in enumerate(nmaps)]
    started = [run_in_thread(r) for r in runs]
    for i, (thread, results) in enumerate(started):
        thread.join(30)
        assert results[0].returncode == 0
        assert f'portid="{1000 + i}"'.encode() in results[0].stdout


# --------------------------------------------------------------------------- spawn errors


def test_a_missing_program_is_a_spawn_error(tmp_path):
    result = run([tmp_path / "no-such-scanner", "10.0.0.5"])
    assert result.spawn_error is not None and "No such file" in result.spawn_error
    assert result.spawn_errno == errno.ENOENT
    assert result.pid is None and result.returncode is None and not result.cancelled


def test_a_program_without_execute_permission_is_a_spawn_error(tmp_path):
    path = tmp_path / "scanner"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o644)
    result = run([path])
    assert result.spawn_error is not None and "Permission denied" in result.spawn_error
    assert result.spawn_errno == errno.EACCES and result.pid is None


def test_a_program_being_written_is_a_spawn_error_that_names_its_errno(tmp_path):
    path = tmp_path / "scanner"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o755)
    with path.open("a"):  # open for writing: the kernel refuses to execute it
        result = run([path])
    assert result.spawn_errno == errno.ETXTBSY and result.pid is None
    assert run([path]).returncode == 0


def test_an_argument_with_a_nul_byte_is_a_spawn_error():
    result = run(["/bin/echo", "a\0b"])
    assert result.spawn_error is not None and result.pid is None


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"argv": [], "timeout_sec": 1}, ValueError),
        ({"argv": "nmap -sV 10.0.0.5", "timeout_sec": 1}, TypeError),
        ({"argv": ["/bin/true"], "timeout_sec": 0}, ValueError),
        ({"argv": ["/bin/true"], "timeout_sec": 1, "stdout_cap": -1}, ValueError),
        ({"argv": ["/bin/true"], "timeout_sec": 1, "kill_grace_sec": -1}, ValueError),
        ({"argv": ["/bin/true"], "timeout_sec": 1, "env": {"HOME": "/root"}}, ValueError),
    ],
)
def test_requests_that_cannot_describe_a_run_are_refused(kwargs, error):
    with pytest.raises(error):
        RunRequest(**kwargs)


def test_a_run_runs_once():
    process_run = ProcessRun(RunRequest(["/bin/true"], timeout_sec=5))
    process_run.run()
    with pytest.raises(RuntimeError):
        process_run.run()


def test_spawn_starts_one_process_whoever_calls_it_first(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    process_run = ProcessRun(RunRequest([str(nmap), "-oX", "-", "10.0.0.5"], timeout_sec=30))
    process_run.spawn()
    process_run.spawn()
    result = process_run.run()
    process_run.spawn()
    assert result.returncode == 0
    assert [call["pid"] for call in read_calls(nmap)] == [result.pid]


def test_a_run_spawned_on_one_thread_is_supervised_on_another(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap")
    process_run = ProcessRun(RunRequest([str(nmap), "-oX", "-", "10.0.0.5"], timeout_sec=30))
    process_run.spawn()
    (call,) = wait_until(lambda: read_calls(nmap), what="the fake to start")  # it runs before anyone waits
    assert process_run.pid == call["pid"]
    thread, results = run_in_thread(process_run)
    thread.join(30)
    (result,) = results
    assert result.returncode == 0 and b"<nmaprun" in result.stdout
    assert result.pid == call["pid"]
    assert_gone(call["pid"])


def test_a_run_cancelled_between_spawn_and_supervision_still_ends_its_group(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child")
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=60))
    process_run.spawn()
    (call,) = wait_until(lambda: read_calls(nmap), what="the fake to start")
    process_run.cancel()
    result = process_run.run()
    assert result.cancelled and not result.timed_out
    assert_gone(call["pid"], call["child_pid"])


def test_a_failed_spawn_leaves_no_descriptor_behind(tmp_path):
    fds_before = len(os.listdir("/proc/self/fd"))
    process_run = ProcessRun(RunRequest([str(tmp_path / "missing")], timeout_sec=5))
    process_run.spawn()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    result = process_run.run()
    assert result.spawn_error and result.pid is None


# --------------------------------------------------------------------------- output caps


def test_stdout_beyond_its_cap_is_drained_and_dropped(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="flood", flood_bytes=3_000_000)
    result = run([nmap], stdout_cap=100_000)
    assert result.returncode == 0  # the writer was never blocked: everything was read
    assert len(result.stdout) == 100_000 and result.stdout_truncated
    assert result.stdout == (b"x" * 127 + b"\n") * 781 + b"x" * 32
    assert not result.stderr_truncated


def test_stderr_has_its_own_cap(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="flood", flood_stream="stderr", flood_bytes=1_000_000)
    result = run([nmap])
    assert result.returncode == 0
    assert len(result.stderr) == 256 << 10 and result.stderr_truncated
    assert result.stdout == b"" and not result.stdout_truncated


def test_output_exactly_at_the_cap_is_not_truncated(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="flood", flood_bytes=4096)
    result = run([nmap], stdout_cap=4096)
    assert len(result.stdout) == 4096 and not result.stdout_truncated


def test_a_200_mb_flood_keeps_memory_bounded(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="flood", flood_bytes=200_000_000)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    lines: list[str] = []

    def keep_the_first_ten(line: str) -> None:
        if len(lines) < 10:
            lines.append(line)

    result = run([nmap], timeout_sec=120, on_line=keep_the_first_ten)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB during the flood"
    assert result.returncode == 0 and not result.timed_out
    assert len(result.stdout) == 1 << 20 and result.stdout_truncated
    assert lines[0] == "x" * 127


# --------------------------------------------------------------------------- lines for progress


def test_lines_arrive_while_the_program_still_runs(tmp_path):
    release = tmp_path / "release"
    program = script(tmp_path, 'echo "step one"\nwhile [ ! -e "$1" ]; do sleep 0.01; done\necho "step two" >&2\n')
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "step one":
            release.touch()  # the program only goes on once it has been heard

    result = run([program, release], timeout_sec=20, on_line=on_line)
    assert not result.timed_out
    assert lines == ["step one", "step two"]


def test_progress_lines_of_a_slow_scan_come_in_order(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="slow", delay_sec=0.2, steps=4)
    lines: list[str] = []
    result = run([nmap, "-p", "22", "--stats-every", "1s", "-oX", "-", "10.0.0.5"], on_line=lines.append)
    assert result.returncode == 0
    progress = [line for line in lines if line.startswith("<taskprogress")]
    assert [p.split('percent="')[1].split('"')[0] for p in progress] == ["20.00", "40.00", "60.00", "80.00"]
    assert lines.index(progress[-1]) < lines.index("</nmaprun>")


def test_carriage_returns_end_lines_too(tmp_path):
    masscan = install_fake(tmp_path, "masscan", mode="slow", delay_sec=0.1, steps=2)
    lines: list[str] = []
    result = run([masscan, "-p80", "-oJ", "-", "10.0.0.5"], on_line=lines.append)
    assert result.returncode == 0
    rates = [line for line in lines if line.startswith("rate:")]
    assert [r.split(", ")[1] for r in rates] == ["33.33% done", "66.67% done"]


def test_line_endings_and_undecodable_bytes(tmp_path):
    program = script(tmp_path, r"printf 'a\r\nb\n\n\377c\nlast without newline'" + "\n")
    lines: list[str] = []
    run([program], on_line=lines.append)
    assert lines == ["a", "b", "\ufffdc", "last without newline"]


def test_an_endless_line_is_cut(tmp_path):
    program = script(tmp_path, "head -c 300000 /dev/zero | tr '\\0' a; echo; echo done\n")
    lines: list[str] = []
    result = run([program], on_line=lines.append)
    assert result.returncode == 0 and len(result.stdout) == 300_006
    assert lines == ["a" * MAX_LINE_BYTES, "done"]


def test_a_failing_line_callback_does_not_end_the_run(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    calls = []

    def broken(line: str) -> None:
        calls.append(line)
        raise RuntimeError("listener broke")

    result = run([nmap, "-p", "22", "-oX", "-", "10.0.0.5"], on_line=broken)
    assert result.returncode == 0 and result.stdout.endswith(b"</nmaprun>\n")
    assert len(calls) > 5


# --------------------------------------------------------------------------- timeouts and groups


def test_a_hanging_tool_and_its_child_are_killed_at_the_timeout(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child")
    result = run([nmap, "-oX", "-", "10.0.0.5"], timeout_sec=READY_SEC)
    assert result.timed_out and not result.cancelled
    assert result.signal == signal.SIGTERM and result.returncode is None
    assert READY_SEC <= result.duration_sec < READY_SEC + 1.5  # TERM sufficed: no waiting out the 2 s grace
    assert result.stdout.startswith(b"<?xml")  # what came before the hang is kept
    (call,) = read_calls(nmap)
    assert_gone(call["pid"], call["child_pid"])


def test_a_group_ignoring_sigterm_gets_sigkill_after_the_grace(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child", ignore_term=True)
    result = run([nmap, "10.0.0.5"], timeout_sec=READY_SEC, kill_grace_sec=0.3)
    assert result.timed_out and result.signal == signal.SIGKILL
    assert READY_SEC + 0.3 <= result.duration_sec < READY_SEC + 2
    (call,) = read_calls(nmap)
    assert_gone(call["pid"], call["child_pid"])


def test_a_child_outliving_its_terminated_leader_gets_sigkill(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child", child_ignores_term=True)
    cpu_before = time.thread_time()
    result = run([nmap, "10.0.0.5"], timeout_sec=READY_SEC, kill_grace_sec=0.5)
    cpu_used = time.thread_time() - cpu_before
    assert result.timed_out and result.signal == signal.SIGTERM  # how the leader ended
    assert READY_SEC + 0.5 <= result.duration_sec < READY_SEC + 2
    assert cpu_used < 0.25, f"the runner spent {cpu_used:.2f}s of CPU waiting"
    (call,) = read_calls(nmap)
    assert_gone(call["pid"], call["child_pid"])


def test_no_grace_means_sigkill_at_once(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang", ignore_term=True)
    result = run([nmap, "10.0.0.5"], timeout_sec=READY_SEC, kill_grace_sec=0)
    assert result.timed_out and result.signal == signal.SIGKILL
    assert result.duration_sec < READY_SEC + 1


def test_children_holding_the_pipes_after_the_leader_exits_are_killed(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child", parent_exits=True)
    result = run([nmap, "-oX", "-", "10.0.0.5"], timeout_sec=30)
    assert result.returncode == 0 and not result.timed_out and not result.cancelled
    assert result.stdout.endswith(b"</nmaprun>\n")
    assert result.duration_sec < 5  # a short drain, not the timeout
    (call,) = read_calls(nmap)
    assert call["exit_code"] == 0
    assert_gone(call["child_pid"])


def test_children_left_behind_without_the_pipes_are_killed_too(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child", parent_exits=True, child_closes_pipes=True)
    result = run([nmap, "10.0.0.5"], timeout_sec=30)
    assert result.returncode == 0 and result.duration_sec < 5
    (call,) = read_calls(nmap)
    assert_gone(call["child_pid"])


def test_every_process_is_reaped_and_no_descriptor_leaks(tmp_path):
    nmap = install_fake(tmp_path / "ok", "nmap")
    hanging = install_fake(tmp_path / "hang", "nmap", mode="hang_with_child")
    fds_before = len(os.listdir("/proc/self/fd"))
    pids = [run([nmap, "10.0.0.5"]).pid for _ in range(5)]
    pids += [run([hanging, "10.0.0.5"], timeout_sec=0.2).pid for _ in range(3)]
    pids.append(run([tmp_path / "missing"]).pid)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    assert not children & set(pids)  # not even as zombies


# --------------------------------------------------------------------------- processes that leave the group


def our_children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


def test_a_process_detached_from_a_timed_out_run_is_killed_and_reaped(tmp_path, subreaper, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="detach")
    result = run([nmap, "10.0.0.5"], timeout_sec=READY_SEC)
    assert result.timed_out
    (call,) = read_calls(nmap)
    assert not process_alive(call["detached_pid"])  # ended by the run, not eventually
    assert call["detached_pid"] not in our_children()  # and reaped: not even a zombie


def test_a_process_detached_from_a_run_that_ended_by_itself_is_killed(tmp_path, subreaper, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="detach", parent_exits=True)
    result = run([nmap, "-oX", "-", "10.0.0.5"], timeout_sec=30)
    assert result.returncode == 0 and result.stdout.endswith(b"</nmaprun>\n")
    (call,) = read_calls(nmap)
    assert not process_alive(call["detached_pid"])
    assert call["detached_pid"] not in our_children()


def test_a_process_detached_from_a_cancelled_run_is_killed(tmp_path, subreaper):
    nmap = install_fake(tmp_path, "nmap", mode="detach")
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=60))
    thread, results = run_in_thread(process_run)
    (call,) = wait_until(lambda: read_calls(nmap), what="the fake to start")
    assert process_alive(call["detached_pid"])
    process_run.cancel()
    thread.join(10)
    assert results[0].cancelled
    assert not process_alive(call["detached_pid"])


def test_a_detached_process_still_under_the_leader_is_killed_without_a_subreaper(tmp_path):
    assert not is_subreaper()
    nmap = install_fake(tmp_path, "nmap", mode="detach", detach_child_stays=True)
    result = run([nmap, "10.0.0.5"], timeout_sec=READY_SEC)
    assert result.timed_out
    (call,) = read_calls(nmap)
    assert not process_alive(call["child_pid"]) and not process_alive(call["detached_pid"])


def test_the_subreaper_is_linux_only_and_says_so_elsewhere(monkeypatch, caplog):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert set_subreaper(True) is False
    assert "subreaper" in caplog.text


# --------------------------------------------------------------------------- cancel


def test_cancel_mid_run_kills_the_group(tmp_path, exit_watch):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child")
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=60))
    thread, results = run_in_thread(process_run)
    (call,) = wait_until(lambda: read_calls(nmap), what="the fake to start")
    assert process_alive(call["pid"]) and process_alive(call["child_pid"])
    process_run.cancel()
    thread.join(10)
    assert not thread.is_alive()
    (result,) = results
    assert result.cancelled and not result.timed_out
    assert result.signal == signal.SIGTERM
    assert result.duration_sec < 10
    assert process_run.pid == call["pid"]
    assert_gone(call["pid"], call["child_pid"])


def test_cancel_of_a_group_ignoring_sigterm_ends_in_sigkill(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child", ignore_term=True)
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=60, kill_grace_sec=0.2))
    thread, results = run_in_thread(process_run)
    (call,) = wait_until(lambda: read_calls(nmap), what="the fake to start")
    process_run.cancel()
    process_run.cancel()  # idempotent
    thread.join(10)
    (result,) = results
    assert result.cancelled and result.signal == signal.SIGKILL
    assert_gone(call["pid"], call["child_pid"])


def test_cancel_before_run_spawns_nothing(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=10))
    process_run.cancel()
    result = process_run.run()
    assert result.cancelled and result.pid is None and result.spawn_error is None
    assert process_run.pid is None
    assert read_calls(nmap) == []


def test_cancel_after_run_changes_nothing(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    process_run = ProcessRun(RunRequest([str(nmap), "10.0.0.5"], timeout_sec=10))
    result = process_run.run()
    process_run.cancel()
    process_run.cancel()
    assert result.returncode == 0 and not result.cancelled
