"""Every process a run starts ends with the run, also one that left the run's process group.

A detached process (`setsid`, a double fork) escapes the group signal, so a stopping run also kills
what descends from its leader and what was re-parented to us (a child subreaper) still carrying the
run's private ``HOME``, and reaps its own children; what dropped that mark is ended at exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

import psutil

__all__ = [
    "RunProcesses",
    "boot_id",
    "end_left_group",
    "end_leftovers",
    "is_subreaper",
    "process_start_ticks",
    "set_subreaper",
]

_log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# How often a sweep looks again whether what it killed has gone.
_SETTLE_POLL_SEC = 0.005


def set_subreaper(enabled: bool) -> bool:
    """Have orphaned descendants of this process re-parent to it instead of init (Linux); True if that holds now.

    Elsewhere nothing changes, and a warning says what that costs. A subreaper
    must reap what it inherits: `RunProcesses.end` and `end_leftovers` do.
    """
    if not sys.platform.startswith("linux"):
        _log.warning("no child subreaper on %s: a process a tool detaches may outlive its run", sys.platform)
        return False
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, int(enabled))
    except OSError as exc:
        _log.warning("could not become a child subreaper (%s): a process a tool detaches may outlive its run", exc)
        return False
    return True


def is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    flag = ctypes.c_int(0)
    _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
    return bool(flag.value)


def _prctl(option: int, argument: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(argument), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux); with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # field 22 of stat(5); the first two (pid, comm) precede the ")"


@functools.cache
def boot_id() -> str:
    """This boot's id (Linux): process ids and start ticks are only comparable within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return boot.read().strip()
    except OSError:
        return ""


def end_left_group(pgid: int, start_ticks: int, home: str | None = None) -> bool:
    """Kill what is left of process group `pgid`, recorded by an earlier life of this daemon.

    While its leader is still the process that started at `start_ticks`, the whole group goes. Once
    the leader is gone (the run's watchdog, or the tool itself, ended it), its members still carrying the run's
    `home` go: the kernel gives no new process the pid of a group that still has members, and a
    stranger's group is told apart by that mark. True if anything was signalled.
    """
    if process_start_ticks(pgid) == start_ticks:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
            return True
    if home is None:
        return False
    members = [process for process in _group_members(pgid) if _home_of(process) == home]
    for process in members:
        _kill(process)
    return bool(members)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


class RunProcesses:
    """The processes of one run besides its leader, for the run's own thread.

    `observe` notes the leader's descendants; call it only while the leader is
    unreaped (its pid is then still its own). `end` kills what was noted and
    what comes back marked with the run's ``home``, and reaps what is ours.
    """

    def __init__(self, leader_pid: int, home: str) -> None:
        self.leader_pid = leader_pid
        self.home = home
        self._seen: dict[int, psutil.Process] = {}

    def observe(self) -> None:
        for process in _descendants(self.leader_pid):
            self._seen.setdefault(process.pid, process)

    def end(self, timeout: float) -> list[int]:
        """Kill every process of the run but the leader and wait until each is reaped or gone; returns their pids."""
        return _end(self._find, timeout)

    def _find(self) -> list[psutil.Process]:
        marked = [
            child for child in _reparented_to_us() if child.pid != self.leader_pid and _home_of(child) == self.home
        ]
        return _with_descendants([*self._seen.values(), *marked])


def end_leftovers(timeout: float = 1.0) -> list[int]:
    """Kill every process still descending from this one and reap this one's children, zombies included.

    For the owner of the whole process, once no run is left (``labrecon serve``
    at exit): an embedding program's own children would go too.
    """
    ended = _end(lambda: psutil.Process().children(recursive=True), timeout)
    if ended:
        _log.warning("ended %d processes the runs left behind: %s", len(ended), ended)
    return ended


def _end(find: Callable[[], list[psutil.Process]], timeout: float) -> list[int]:
    """SIGKILL what `find` returns, again until it finds nothing new, then wait until all of it is reaped or gone."""
    deadline = time.monotonic() + timeout
    killed: dict[int, psutil.Process] = {}
    while True:
        new = [process for process in find() if process.pid not in killed]
        for process in new:
            _kill(process)
            killed[process.pid] = process
        waiting = [process for process in killed.values() if not _finished(process, killed)]
        if not new and not waiting:
            return sorted(killed)
        if time.monotonic() >= deadline:
            _log.warning("processes %s were still there %.1fs after SIGKILL", [p.pid for p in waiting], timeout)
            return sorted(killed)
        time.sleep(_SETTLE_POLL_SEC)


def _reparented_to_us() -> list[psutil.Process]:
    """The children of this process's main thread: where the kernel re-parents orphans while that thread lives."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children", "rb") as listing:
            return _processes(int(child) for child in listing.read().split())
    except OSError:  # no such file on this kernel, or the main thread has ended: ask every thread
        return _processes(_child_pids(os.getpid()))


def _descendants(pid: int) -> list[psutil.Process]:
    """What descends from `pid`, found by walking down from it rather than by reading every process."""
    found: list[int] = []
    below = _child_pids(pid)
    while below:
        found += below
        below = [grandchild for child in below for grandchild in _child_pids(child)]
    return _processes(found)


def _child_pids(pid: int) -> list[int]:
    """The children of `pid` from its threads' `children` files; every process's parent where the kernel has none.

    A run's sweep costs a few small reads this way, where scanning all of /proc grows with the whole machine.
    """
    if not _HAS_CHILDREN_FILES:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    pids: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as listing:
                pids += [int(child) for child in listing.read().split()]
        except OSError:
            pass  # that thread has ended
    return pids


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in dict.fromkeys(pids):
        with contextlib.suppress(psutil.Error):  # already gone: nothing to end
            found.append(psutil.Process(pid))
    return found


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _home_of(process: psutil.Process) -> str | None:
    """The ``HOME`` a process was started with; None if unreadable (a zombie, another user's)."""
    try:
        return process.environ().get("HOME")
    except psutil.Error:
        return None


def _with_descendants(roots: Iterable[psutil.Process]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for root in roots:
        found.setdefault(root.pid, root)
        try:
            if root.is_running():  # its pid is still its own: what lists it as parent descends from it
                for process in _descendants(root.pid):
                    found.setdefault(process.pid, process)
        except psutil.Error:
            pass
    return list(found.values())


def _kill(process: psutil.Process) -> None:
    try:
        if process.is_running():
            process.kill()
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        _log.warning("not permitted to kill process %d", process.pid)


def _finished(process: psutil.Process, killed: dict[int, psutil.Process]) -> bool:
    """Whether `process` is reaped now, or gone, or a zombie that someone outside this sweep will reap."""
    try:
        if not process.is_running():
            return True
        parent = process.ppid()
        if parent == os.getpid():
            # Our child: nobody else can reap it, so its pid is still its own.
            return os.waitpid(process.pid, os.WNOHANG)[0] != 0
        # A zombie whose parent is being killed too is re-parented, maybe to us: wait for that.
        return process.status() == psutil.STATUS_ZOMBIE and parent not in killed
    except (psutil.NoSuchProcess, ChildProcessError):
        return True
    except psutil.AccessDenied:
        return False
