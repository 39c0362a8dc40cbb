"""One subprocess run: spawn, read both pipes, bound it in time and bytes, stop it, reap it.

A run never hangs its caller, never keeps more output than its caps, never leaves a process behind
and never shows the tool our environment: no shell, stdin from /dev/null, a minimal environment and
a fresh private HOME; the tool leads its own process group, which gets TERM then KILL on timeout or
cancel; both pipes are read by one poll loop on the calling thread.
"""

from __future__ import annotations

import logging
import math
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from actors.containment import RunProcesses

__all__ = ["MINIMAL_ENV", "ProcessRun", "Run", "RunRequest", "RunResult"]

_log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
# Longest line handed to `on_line`; the rest of a longer line is dropped.
MAX_LINE_BYTES = 64 << 10
# How long group members may keep the pipes open after the leader exited
# before they are treated as leftovers and terminated.
LEADER_EXIT_DRAIN_SEC = 0.2
# After SIGKILL: how long to wait for the pipes to close and the leader to
# exit. Only a process that left the group (its own setsid) can hold a pipe
# that long; its pipe is then closed on it.
AFTER_KILL_WAIT_SEC = 1.0
# Without pidfds the leader's exit is noticed by polling at this interval.
_EXIT_POLL_SEC = 0.02

# Every run adds HOME: its own directory. Tools read per-user configuration and
# scripts from there (``~/.nmap``), so no run may see the daemon's or another run's.
MINIMAL_ENV: Mapping[str, str] = MappingProxyType({"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
# Where each run's private HOME and working directory is made: a memory file system when there is one,
# since making and removing a directory there costs a tenth of what it costs on disk.
RUN_DIRECTORY_BASE: str | None = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None

@dataclass(frozen=True)
class RunRequest:
    """What to run and within which bounds.

    ``env`` adds to (or overrides) `MINIMAL_ENV`; it never brings back the
    daemon's environment, and never sets ``HOME``: that is the run's own
    directory, also its working directory unless ``cwd`` names another.
    """

    argv: Sequence[str]
    timeout_sec: float
    stdout_cap: int = 1 << 20
    stderr_cap: int = 256 << 10
    kill_grace_sec: float = 2.0
    env: Mapping[str, str] | None = None
    cwd: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.argv, (str, bytes)):
            raise TypeError("argv is a sequence of arguments, not a command line")
        object.__setattr__(self, "argv", tuple(self.argv))
        if not self.argv:
            raise ValueError("argv must name a program")
        if not self.timeout_sec > 0:
            raise ValueError("timeout_sec must be positive")
        if self.stdout_cap < 0 or self.stderr_cap < 0:
            raise ValueError("output caps must not be negative")
        if self.kill_grace_sec < 0:
            raise ValueError("kill_grace_sec must not be negative")
        if self.env is not None and "HOME" in self.env:
            raise ValueError("HOME is the run's own directory and cannot be set")


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    ``returncode`` is the exit status when the leader exited by itself, and
    None when a signal ended it (then ``signal`` names it) or it never ran
    (then ``spawn_error`` says why, with the OS's ``spawn_errno`` when it gave
    one, or ``cancelled`` is set).
    """

    returncode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    cancelled: bool
    duration_sec: float
    spawn_error: str | None
    pid: int | None
    spawn_errno: int | None = None
    # A remote run only: its pool and the node it ran on; why the node would not spawn it (its own
    # checks); why the run was lost, and whether its runner died with it (else no node took it in time).
    pool: str | None = None
    node: str | None = None
    refused: str | None = None
    lost: str | None = None
    runner_died: bool = False
    argv: tuple[str, ...] | None = None  # the command line a node built and ran, when it is a node's run

    @classmethod
    def no_process(cls, duration_sec: float = 0.0, **why: Any) -> RunResult:
        """A result no process of ours produced: `why` (cancelled, spawn_error, refused, lost...) says what happened."""
        empty: dict[str, Any] = {
            "returncode": None, "signal": None, "stdout": b"", "stderr": b"", "stdout_truncated": False,
            "stderr_truncated": False, "timed_out": False, "cancelled": False, "spawn_error": None, "pid": None,
        }
        return cls(duration_sec=duration_sec, **{**empty, **why})


class Run(Protocol):
    """What a tool actor drives: a `ProcessRun` here, or a remote run on a scanner node.

    `spawn` then `run` once, on one runner thread; `cancel` from any thread at any time. `pid` and
    `home` are set once a process exists on this machine (never for a remote one); `started` once a
    process exists anywhere.
    """

    request: RunRequest
    pid: int | None
    home: str | None

    @property
    def started(self) -> bool: ...

    def spawn(self) -> None: ...

    def run(self) -> RunResult: ...

    def cancel(self) -> None: ...

    def wait_cancelled(self, timeout: float) -> bool: ...


class _Capture:
    """One output pipe: the bytes kept under the cap, and the line being assembled."""

    __slots__ = ("cap", "data", "fd", "partial", "truncated")

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.partial = b""

    def keep(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) <= room:
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
        self.truncated = True

    def lines(self, chunk: bytes) -> list[bytes]:
        """Complete lines in ``partial + chunk``; ``\\r`` ends a line too (progress meters use it)."""
        parts = (self.partial + chunk).replace(b"\r", b"\n").split(b"\n")
        self.partial = parts.pop()[:MAX_LINE_BYTES]
        return [part[:MAX_LINE_BYTES] for part in parts if part]


class ProcessRun:
    """A single run of one argv; `run` once, `cancel` from any thread at any time.

    ``run`` spawns the process and supervises it to the end. A caller that
    wants to know the tool started before it is supervised may call `spawn`
    first (`run` then only supervises). A spawned run owns a live process
    group: `run` must follow.

    ``on_line`` is called on the thread inside `run` with every stdout and
    stderr line (split at ``\\n`` or ``\\r``, decoded leniently, empty lines
    skipped, cut at `MAX_LINE_BYTES`), including lines beyond the output caps.
    It should return quickly: while it runs, neither pipe is read.
    """

    def __init__(self, request: RunRequest, on_line: Callable[[str], None] | None = None) -> None:
        self.request = request
        self.pid: int | None = None
        self.home: str | None = None  # the run's private HOME once spawned: every process of the run carries it
        self._on_line = on_line
        self._line_error_logged = False
        self._lock = threading.Lock()
        self._cancelled = False
        self._cancel_event = threading.Event()
        self._spawned = False
        self._ran = False
        self._started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._home: str | None = None  # the run's HOME and working directory, until removed
        self._processes: RunProcesses | None = None
        self._not_run: RunResult | None = None  # why there is no process: cancelled first, or the spawn failed
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    @property
    def started(self) -> bool:
        return self.pid is not None

    def cancel(self) -> None:
        """Ask the run to stop; before the spawn it prevents it, after the process ends it does nothing."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._cancel_event.set()
            if self._wake_w is not None:
                os.write(self._wake_w, b"\0")

    def wait_cancelled(self, timeout: float) -> bool:
        """Block up to `timeout` seconds, returning early (True) if the run is cancelled meanwhile."""
        return self._cancel_event.wait(timeout)

    def spawn(self) -> None:
        """Start the process now, on this thread, unless it was started (or settled not to run) already.

        The lock is held while the process starts: a `run` on another thread
        then waits for it instead of starting a second one, and a `cancel`
        lands once there is a process to stop.
        """
        request = self.request
        with self._lock:
            if self._spawned:
                return
            self._spawned = True
            self._started_at = time.monotonic()
            if self._cancelled:
                self._not_run = _not_run(self._started_at, cancelled=True)
                return
            wake: tuple[int, int] | None = None
            try:
                self._home = tempfile.mkdtemp(prefix="labrecon-run-", dir=RUN_DIRECTORY_BASE)
                env = {**MINIMAL_ENV, **(request.env or {}), "HOME": self._home}
                wake = os.pipe()
                self._proc = subprocess.Popen(
                    request.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                    close_fds=True,
                    start_new_session=True,
                    env=env,
                    cwd=request.cwd or self._home,
                )
            except Exception as exc:  # noqa: BLE001 - whatever failed, no process exists: the run ends as a spawn error
                for fd in wake or ():
                    os.close(fd)
                self._not_run = _not_run(
                    self._started_at,
                    spawn_error=str(exc) or type(exc).__name__,
                    spawn_errno=exc.errno if isinstance(exc, OSError) else None,
                )
                if self._home is not None:
                    _remove_directory(self._home)
                    self._home = None
                return
            self._wake_r, self._wake_w = wake
            self.pid = self._proc.pid
            self.home = self._home
            self._processes = RunProcesses(self._proc.pid, self._home)

    def run(self) -> RunResult:
        """Spawn (unless that happened already), supervise to the end, reap; returns how the run ended."""
        with self._lock:
            if self._ran:
                raise RuntimeError("a ProcessRun runs only once")
            self._ran = True
        self.spawn()
        if self._proc is None:
            assert self._not_run is not None
            return self._not_run
        assert self._wake_r is not None and self._processes is not None
        try:
            return self._supervise(self._proc, self._processes, self._started_at, self._wake_r)
        finally:
            self._close_wake_pipe()
            self._remove_home()

    def _close_wake_pipe(self) -> None:
        with self._lock:
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = None
        for fd in (wake_r, wake_w):
            if fd is not None:
                os.close(fd)

    def _remove_home(self) -> None:
        with self._lock:
            home, self._home = self._home, None
        if home is not None:
            _remove_directory(home)

    def _supervise(
        self, proc: subprocess.Popen[bytes], processes: RunProcesses, started: float, wake_r: int
    ) -> RunResult:
        request = self.request
        assert proc.stdout is not None and proc.stderr is not None
        out = _Capture(proc.stdout.fileno(), request.stdout_cap)
        err = _Capture(proc.stderr.fileno(), request.stderr_cap)
        streams = {out.fd: out, err.fd: err}
        pidfd = _pidfd_open(proc.pid)
        poller = select.poll()
        for fd in [out.fd, err.fd, wake_r, *([] if pidfd is None else [pidfd])]:
            poller.register(fd, select.POLLIN)

        deadline = started + request.timeout_sec
        leader_exited = False
        stopping = False  # SIGTERM sent
        timed_out = cancelled = False
        drain_until: float | None = None  # the leader exited: read what its group still writes until then
        kill_at: float | None = None
        give_up_at: float | None = None
        try:
            while streams or not leader_exited:
                now = time.monotonic()
                wakeups: list[float]
                if stopping:
                    wakeups = [t for t in (kill_at, give_up_at) if t is not None]
                else:
                    wakeups = [deadline if drain_until is None else drain_until]
                if pidfd is None and not leader_exited:
                    wakeups.append(now + _EXIT_POLL_SEC)
                wait_ms = max(0, math.ceil((min(wakeups) - now) * 1000))
                for fd, _ in poller.poll(wait_ms):
                    capture = streams.get(fd)
                    if capture is not None:
                        if not self._read(capture):
                            poller.unregister(fd)
                            del streams[fd]
                    elif fd == wake_r:
                        os.read(wake_r, 64)
                        poller.unregister(wake_r)
                        cancelled = not stopping  # a run already being stopped ends as it would have
                    elif fd == pidfd:
                        poller.unregister(pidfd)
                        leader_exited = True
                if pidfd is None and not leader_exited:
                    leader_exited = _exited(proc.pid)

                now = time.monotonic()
                if leader_exited and streams and drain_until is None:
                    drain_until = now + LEADER_EXIT_DRAIN_SEC
                if not stopping:
                    timed_out = not cancelled and not leader_exited and now >= deadline
                    if cancelled or timed_out or (drain_until is not None and now >= drain_until):
                        if not leader_exited:
                            processes.observe()  # while the leader lives, what it started still descends from it
                        kill_at = self._terminate(proc.pid)
                        stopping = True
                if kill_at is not None and now >= kill_at:
                    _signal_group(proc.pid, signal.SIGKILL)
                    kill_at = None
                    give_up_at = now + AFTER_KILL_WAIT_SEC
                if give_up_at is not None and now >= give_up_at:
                    break
        finally:
            # Whatever of the group is still alive dies with the run, and so
            # does what left it. The leader is not reaped yet, so its pid and
            # group id still mean this run.
            if not leader_exited:
                processes.observe()
            _signal_group(proc.pid, signal.SIGKILL)
            processes.end(AFTER_KILL_WAIT_SEC)
            for capture in streams.values():
                self._deliver(capture.partial)
            proc.stdout.close()
            proc.stderr.close()
            if pidfd is not None:
                os.close(pidfd)
            try:
                proc.wait(timeout=AFTER_KILL_WAIT_SEC)
            except subprocess.TimeoutExpired:
                # Stuck in the kernel even after SIGKILL; subprocess reaps it
                # later. Reported as killed.
                _log.warning("process %d did not exit after SIGKILL", proc.pid)

        code = proc.returncode
        return RunResult(
            returncode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else (signal.SIGKILL if code is None else None),
            stdout=bytes(out.data),
            stderr=bytes(err.data),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            timed_out=timed_out,
            cancelled=cancelled,
            duration_sec=time.monotonic() - started,
            spawn_error=None,
            pid=proc.pid,
        )

    def _read(self, capture: _Capture) -> bool:
        """Read what the pipe has; False at end of file."""
        chunk = os.read(capture.fd, READ_CHUNK)
        if not chunk:
            self._deliver(capture.partial)
            capture.partial = b""
            return False
        capture.keep(chunk)
        if self._on_line is not None:
            for line in capture.lines(chunk):
                self._deliver(line)
        return True

    def _deliver(self, line: bytes) -> None:
        if not line or self._on_line is None:
            return
        try:
            self._on_line(line.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - progress is a courtesy; a failing listener must not end the run
            if not self._line_error_logged:
                self._line_error_logged = True
                _log.exception("line callback failed; further failures of this run are not logged")

    def _terminate(self, pgid: int) -> float:
        """SIGTERM the group; returns when SIGKILL is due."""
        _signal_group(pgid, signal.SIGTERM)
        return time.monotonic() + self.request.kill_grace_sec


def _not_run(
    started: float, *, cancelled: bool = False, spawn_error: str | None = None, spawn_errno: int | None = None
) -> RunResult:
    return RunResult.no_process(
        time.monotonic() - started, cancelled=cancelled, spawn_error=spawn_error, spawn_errno=spawn_errno
    )


def _remove_directory(path: str) -> None:
    try:
        os.rmdir(path)  # most runs leave their directory empty
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        _log.warning("could not remove the run directory %s", path)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        _log.warning("not permitted to signal process group %d", pgid)


def _pidfd_open(pid: int) -> int | None:
    """A descriptor that polls readable when ``pid`` exits, where the kernel offers one."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError:
        return None


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
