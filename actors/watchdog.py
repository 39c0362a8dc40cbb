"""A process that outlives the daemon only to end the runs the daemon leaves behind.

The daemon tells it, over a pipe, each run's process group when the run starts and when it ends.
When the pipe closes (the daemon exited, or was killed: the kernel closes its end either way), it
ends every group still listed, each checked by its leader's start time and its run's HOME as
`end_left_group` does, and exits. A daemon that stops in order has ended its runs first, so then the
list is empty. A run's start costs one line on a pipe; nothing runs between fork and exec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading

from actors.containment import end_left_group
from actors.runner import MINIMAL_ENV

__all__ = ["Watchdog"]

logger = logging.getLogger(__name__)


class Watchdog:
    """The daemon's end of the pipe; `watch` and `forget` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lost = False
        self._watched: set[str] = set()
        self._proc = subprocess.Popen(
            # -P and cwd="/": only the installed labrecon is imported, never a module of the daemon's directory.
            [sys.executable, "-P", "-m", "actors.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            cwd="/",
            env=dict(MINIMAL_ENV),  # nothing of the daemon's environment, its tokens included
            start_new_session=True,  # a signal to the daemon's group (Ctrl-C) must not reach it
        )
        assert self._proc.stdin is not None
        self._pipe = self._proc.stdin.fileno()
        # A stuck watchdog must never stall a runner: a full pipe counts as a lost watchdog.
        os.set_blocking(self._pipe, False)
        self.pid = self._proc.pid

    def watch(self, key: str, pgid: int, start_ticks: int, home: str | None) -> None:
        """A run's group exists: end it if the daemon dies before `forget(key)`."""
        self._send(json.dumps(["+", key, pgid, start_ticks, home]) + "\n", add=key)

    def forget(self, key: str) -> None:
        """The run is over: its group is the daemon's business no more."""
        self._send(json.dumps(["-", key]) + "\n", drop=key)

    def close(self, timeout: float = 10.0) -> int:
        """Close the pipe and wait for the watchdog to end what is still listed (nothing, after a clean stop).

        Returns its exit status: 0 when it ended what it had to, as it should.
        """
        with self._lock:
            self._lost = True
            assert self._proc.stdin is not None
            with contextlib.suppress(OSError):  # it may have died: then there is nobody to tell
                self._proc.stdin.close()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def _send(self, line: str, *, add: str | None = None, drop: str | None = None) -> None:
        with self._lock:
            if self._lost or (drop is not None and drop not in self._watched):
                return
            try:
                # One short line (under PIPE_BUF) is written whole or not at all.
                os.write(self._pipe, line.encode())
            except OSError as exc:  # gone (EPIPE) or stuck (EAGAIN): the store remains, for the next start
                self._lost = True
                logger.error("the watchdog stopped listening (%s): a killed daemon's runs end at the next start", exc)
                return
            if add is not None:
                self._watched.add(add)
            if drop is not None:
                self._watched.discard(drop)


def main() -> None:
    """The watchdog itself: keep the list until the pipe closes, then end what is on it."""
    listed: dict[str, tuple[int, int, str | None]] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:  # a line cut short by the daemon's death: the groups before it still count
            continue
        match message:
            case ["+", str(key), int(pgid), int(ticks), home]:
                listed[key] = (pgid, ticks, home if isinstance(home, str) else None)
            case ["-", str(key)]:
                listed.pop(key, None)
    for pgid, ticks, home in listed.values():
        with contextlib.suppress(Exception):  # one group that cannot be ended must not spare the others
            end_left_group(pgid, ticks, home)
    os._exit(0)


if __name__ == "__main__":
    main()
