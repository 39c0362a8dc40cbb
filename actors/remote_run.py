"""A call's run on a scanner node, driven from the front like a local `ProcessRun`.

`RemoteLaunch` holds one tool actor incarnation's runner: a `ScannerNode` that Ray places on a node
advertising the pool's resource, never restarted by Ray (a lost runner is our supervisor's to
restart). `RemoteRun` sends it one job and reads the stream back: the spawn, the tool's lines for
progress, the end. Whatever happens to the runner or its node, `run` returns: a lost runner, a
node that went away or a runner no node could take within the placement time is a run `lost`.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors.faults import Shaping
from actors.launch import LineSink
from actors.prepare import PreparedCall
from actors.ray_import import ray
from actors.runner import RunRequest, RunResult
from actors.scanner_node import Ended, Lines, NodeReport, RemoteJob, ScannerNode, Spawned
from actors.settings import MAX_CONCURRENCY, IPNetwork, PolicySettings, ToolSettings

__all__ = ["RemoteLaunch", "RemoteRun"]

# Ray threads per runner: every run streams on one, and cancels, pings and reports need their own.
_RUNNER_THREADS = MAX_CONCURRENCY + 8
_ScannerNodeActor = ray.remote(ScannerNode)


class RemoteLaunch:
    """One incarnation's runner on `pool`, and a `RemoteRun` per call (see `actors.launch.Launch`)."""

    def __init__(
        self,
        *,
        pool: str,
        networks: Sequence[IPNetwork],
        resource: str,
        tool: str,
        settings: ToolSettings,
        policy: PolicySettings,
        placement_timeout_sec: float,
        live: Callable[[], bool] = lambda: True,
    ) -> None:
        """`live` says whether a node of the pool was alive at the last look: a call waits for none that is not."""
        self.pool: str | None = pool  # as `Launch` has it; never None here
        self._pool = pool
        self._live = live
        self.placement_timeout_sec = placement_timeout_sec
        self._policy = policy
        self._generation = 0  # configs sent after the first; each job names the one it needs
        self._lost = False  # killed by an injected fault: its incarnation is about to be restarted
        self._probe: ray.ObjectRef | None = None  # the last question to the runner whether it lives
        self._report: ray.ObjectRef | None = None  # the last question for its report
        self._keys = itertools.count(1)
        # Ray's handle types do not follow the methods of the class it hosts.
        self._runner: Any = _ScannerNodeActor.options(
            resources={resource: 1}, num_cpus=0, max_restarts=0, max_concurrency=_RUNNER_THREADS
        ).remote(pool, tuple(networks), tool, settings, policy)

    def __call__(
        self, prepared: PreparedCall, request: RunRequest, on_line: LineSink | None, shaping: Shaping | None
    ) -> RemoteRun:
        job = RemoteJob(f"{prepared.tool}-{next(self._keys)}", prepared, shaping, generation=self._generation)
        run = RemoteRun(self._runner, job, request, on_line, pool=self._pool, placement_sec=self.placement_timeout_sec)
        if self._lost:
            run.lost_before_sent("the runner was lost (an injected runner_lost fault)", runner_died=True)
        elif not self._live():
            run.lost_before_sent(f"pool {self._pool} has no live node; retry later")
        return run

    def configure(self, settings: ToolSettings, policy: PolicySettings | None) -> None:
        self._policy = policy or self._policy
        self._generation += 1
        self._runner.configure.remote(settings, self._policy, self._generation)

    def describe(self) -> ray.ObjectRef:
        """Ask the runner for its `NodeReport` (its node, tool version and load); `reports_of` collects them.

        A question not yet answered (a runner not placed yet) is asked again, not a second time.
        """
        if self._report is None or ray.wait([self._report], timeout=0)[0]:
            self._report = self._runner.describe.remote()
        return self._report

    def alive(self) -> bool:
        """False once a ping to the runner failed; each call looks at the last ping and sends the next."""
        if self._probe is not None:
            ready, _ = ray.wait([self._probe], timeout=0)
            if not ready:
                return True  # not answered yet (or not placed yet): nothing is known to be wrong
            try:
                ray.get(self._probe)
            except ray.exceptions.RayError:
                return False
        self._probe = self._runner.ping.remote()
        return True

    def lose(self) -> None:
        self._lost = True  # nothing more is sent to it: the job in hand could reach it before it dies
        ray.kill(self._runner, no_restart=True)

    def close(self) -> None:
        ray.kill(self._runner, no_restart=True)


def reports_of(launches: Sequence[RemoteLaunch], *, timeout: float) -> list[NodeReport]:
    """The reports of those runners that answer within `timeout`, all asked at once."""
    asked = [launch.describe() for launch in launches]
    ready, _ = ray.wait(asked, num_returns=len(asked), timeout=timeout) if asked else ([], [])
    reports = []
    for ref in ready:
        try:
            reports.append(ray.get(ref))
        except ray.exceptions.RayError:
            continue  # a runner that died: its node's view comes from Ray's own list
    return reports


class RemoteRun:
    """One job on a runner; `spawn` then `run` on one thread, `cancel` from any (see `actors.runner.Run`)."""

    pid: int | None = None  # no process of this machine: its pid means nothing here
    home: str | None = None

    def __init__(
        self,
        runner: Any,
        job: RemoteJob,
        request: RunRequest,
        on_line: LineSink | None,
        *,
        pool: str,
        placement_sec: float,
    ) -> None:
        self.request = request
        self._runner = runner
        self._job = job
        self._on_line = on_line
        self._pool = pool
        self._placement_sec = placement_sec
        self._lock = threading.Lock()
        self._cancel_event = threading.Event()
        self._stream: ray.ObjectRefGenerator | None = None
        self._spawned = False  # spawn was called
        self._started = False  # the node started the process
        self._result: RunResult | None = None
        self._node: str | None = None
        self._began = time.monotonic()

    @property
    def started(self) -> bool:
        return self._started

    def cancel(self) -> None:
        """Ask the node to stop the run; before the node took it, it is called off."""
        with self._lock:
            if self._cancel_event.is_set():
                return
            self._cancel_event.set()
            stream, started = self._stream, self._started
        if stream is None:
            return  # spawn sees the flag and sends nothing
        self._runner.cancel.remote(self._job.key)
        if not started:
            ray.cancel(stream)  # still waiting for a node: it never runs

    def wait_cancelled(self, timeout: float) -> bool:
        return self._cancel_event.wait(timeout)

    def lost_before_sent(self, why: str, *, runner_died: bool = False) -> None:
        """End the run before its job is sent (no node of the pool is live, or the runner is gone)."""
        with self._lock:
            if not self._spawned:
                self._spawned = True
                self._result = self._ended(lost=why, runner_died=runner_died)

    def spawn(self) -> None:
        """Send the job, and wait until the node started the process, refused it, or none took it."""
        with self._lock:
            if self._spawned:
                return
            self._spawned = True
            if self._cancel_event.is_set():
                self._result = self._ended(cancelled=True)
                return
            self._stream = self._runner.run.options(num_returns="streaming").remote(self._job)
        first = self._next(self._placement_sec)
        if first is None:
            ray.cancel(self._stream)  # a job not started yet never starts
            self._runner.cancel.remote(self._job.key)  # one that started as time ran out is stopped on the node
            within = f"{self._placement_sec:g}s"
            self._result = self._ended(lost=f"no node of pool {self._pool} took the call within {within}; retry later")
        elif isinstance(first, Spawned):
            with self._lock:
                self._started, self._node = True, first.node
        elif isinstance(first, Ended):
            self._result = first.result

    def run(self) -> RunResult:
        self.spawn()
        while self._result is None:
            item = self._next(None)
            if isinstance(item, Lines) and self._on_line is not None:
                for line in item.lines:
                    self._on_line(line)
            elif isinstance(item, Ended):
                self._result = item.result
        return self._result

    def _next(self, timeout: float | None) -> Spawned | Lines | Ended | None:
        """The stream's next event; None if none came within `timeout`. A failure is the run's end."""
        assert self._stream is not None
        try:
            ready, _ = ray.wait([self._stream], timeout=timeout)
            if not ready:
                return None
            event: Spawned | Lines | Ended = ray.get(next(self._stream))
            return event
        except ray.exceptions.TaskCancelledError:
            return Ended(self._ended(cancelled=True))
        except StopIteration:
            return Ended(self._ended(lost="the runner ended the run without its result", runner_died=True))
        except RUNNER_GONE as error:
            if self._cancel_event.is_set() and not self._started:
                return Ended(self._ended(cancelled=True))
            return Ended(self._ended(lost=_cause(error), runner_died=True))
        except ray.exceptions.RayError as error:  # our code failed on the node: the runner lives on
            return Ended(self._ended(spawn_error=f"the scanner node failed: {_cause(error)}"))

    def _ended(self, **why: Any) -> RunResult:
        return RunResult.no_process(time.monotonic() - self._began, pool=self._pool, node=self._node, **why)


RUNNER_GONE = (
    ray.exceptions.RayActorError,  # the runner died, or its node did
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
)
"""What Ray raises when the runner, its worker or its node is gone; any other Ray error is the node's code failing."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cause(error: Exception) -> str:
    """What went wrong, in a line a client can read: Ray's messages run to a page, with colours and reprs."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    telling = [line for line in lines if "died" in line.lower() or "node" in line.lower()] or lines or [""]
    return f"{type(error).__name__}: {telling[0]}"[:300]
