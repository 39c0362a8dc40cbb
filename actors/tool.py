"""The ToolActor: one per tool, and the only place a tool's state changes.

Every decision (admit, queue, refuse, start, finish, cancel) is a message on this actor's thread, so
the concurrency limit and the breaker are plain fields. Runner threads touch no actor state and
report with one `Finished` message. Under a supervisor, a dead or retired incarnation answers
nothing: the supervisor answers what it held, so each call is answered, and counted, exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.api import ProgressSink
from actors.breaker import BreakerState, CircuitBreaker, Transition
from actors.events import ActorCrashed, ActorStarted, BreakerChanged, CallFinished, CallQueued, CallStarted, Parent
from actors.faults import Fault, FaultKind, FaultSource, InjectedCrash, no_faults
from actors.launch import LAUNCH_HERE, Launch
from actors.outcome import Verdict, outcome_from_run
from actors.prepare import PreparedCall
from actors.reply import Reply
from actors.results import NODE_LOST_RETRY_SEC, CallOutcome, ErrorType
from actors.runner import Run, RunRequest, RunResult
from actors.settings import MAX_CONCURRENCY, PolicySettings, ToolSettings
from actors.tools.base import ToolSpec

logger = logging.getLogger(__name__)

@dataclass
class Call:
    """An admitted request: what to run and where its answer goes."""

    call_id: str
    prepared: PreparedCall
    reply: Reply[CallOutcome]
    progress: ProgressSink | None = None
    on_spawn: Callable[[int, str | None], None] | None = None  # runner thread: the process (pid, HOME) exists
    on_reaped: Callable[[], None] | None = None  # runner thread: that process and its group are gone
    admitted_at: float = field(default_factory=time.monotonic)
    # The incarnation the call was handed to; written by the slot that routes it, under its lock.
    incarnation: int = 0
    # Written by the owning actor, read by the supervisor when that actor dies or hangs.
    started: bool = False
    run: Run | None = None
    cancel_requested: bool = False

    def failure(self, error_type: ErrorType, message: str, *, retry_after_sec: float | None = None) -> CallOutcome:
        return CallOutcome.failure(
            self.prepared.tool,
            self.call_id,
            error_type,
            message,
            retry_after_sec=retry_after_sec,
            target=self.prepared.target,
            resolved_targets=list(self.prepared.resolved_targets),
            argv=list(self.prepared.argv),
            pool=self.prepared.pool,
        )


def outcome_label(outcome: CallOutcome) -> str:
    """The bounded label an outcome is counted under: "ok" or its error type."""
    return "ok" if outcome.ok or outcome.error is None else outcome.error.error_type.value


# --- messages -----------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    call: Call


@dataclass(frozen=True)
class Finished:
    """A runner's report: the run is over and this is its answer."""

    call_id: str
    outcome: CallOutcome
    verdict: Verdict
    runner_lost: bool = False  # the pool's runner (or its node) is gone: so are its other runs


@dataclass(frozen=True)
class Cancel:
    call_id: str


@dataclass(frozen=True)
class ForceBreaker:
    state: BreakerState


@dataclass(frozen=True)
class Drain:
    """Admit nothing new; `reply` resolves once no call is running or queued.

    With `hand_back`, the queued calls are handed to it at once (a successor runs them) and only the
    running ones are waited for.
    """

    reply: Reply[None]
    hand_back: Callable[[Call], None] | None = None


@dataclass(frozen=True)
class Configure:
    """New limits from a reload (concurrency, queue, caps, breaker); running and queued calls go on.

    `policy` (a new target policy) matters to a pool's runner only, which checks every call again.
    """

    settings: ToolSettings
    policy: PolicySettings | None = None


@dataclass(frozen=True)
class Disable:
    """Taken out of service: answer the queue `tool_disabled` with `reason`, then drain like `Drain`."""

    reason: str
    reply: Reply[None]


@dataclass(frozen=True)
class Ping:
    reply: Reply[float]


class RunnerLost(RuntimeError):
    """Raised on the actor's own thread when its pool's runner is gone, so the supervisor starts another."""


class OperatorRestart(RuntimeError):
    """Raised on the actor's own thread, so an operator restart takes the same path as a crash."""


@dataclass(frozen=True)
class Restart:
    reason: str


@dataclass
class _Running:
    call: Call
    run: Run | None
    started_at: float


class ToolActor(pykka.ThreadingActor):
    # A hung incarnation is abandoned, not joined: it must not keep the process alive.
    use_daemon_thread = True

    def __init__(
        self,
        spec: ToolSpec,
        settings: ToolSettings,
        *,
        parent: Parent | None = None,
        incarnation: int = 1,
        breaker: CircuitBreaker | None = None,
        faults: FaultSource = no_faults,
        retired: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        launch: Launch = LAUNCH_HERE,
        name: str | None = None,
    ) -> None:
        """`name` is what its events and threads are named by: the tool's name, or its slot's on a pool."""
        super().__init__()
        self.spec = spec
        self.name: str = name or spec.name
        self.settings = settings
        self.parent = parent
        self.incarnation = incarnation
        self.breaker = breaker or CircuitBreaker(settings.breaker, clock=clock)
        self.faults = faults
        # Set by the supervisor when this incarnation is replaced; from then on it touches nothing.
        self.retired = retired or threading.Event()
        self.clock = clock
        self.launch = launch
        self.running: dict[str, _Running] = {}
        self.queue: OrderedDict[str, Call] = OrderedDict()
        self.draining: list[Reply[None]] = []
        self.disabled_reason: str | None = None  # set by Disable: what a late arrival is told
        # Sized for the highest concurrency a reload may set; threads are made only as runs need them.
        self._pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENCY, thread_name_prefix=f"{self.name}-run")

    # --- pykka hooks ------------------------------------------------------------

    def on_start(self) -> None:
        self._tell_parent(ActorStarted(self.name, self.incarnation, self.clock()))

    def on_receive(self, message: Any) -> Any:
        if self.retired.is_set():
            return None  # superseded: its calls now belong to the next incarnation
        match message:
            case Submit(call):
                self._admit(call)
            case Finished(call_id, outcome, verdict, runner_lost):
                self._finish(call_id, outcome, verdict, runner_lost=runner_lost)
            case Cancel(call_id):
                self._cancel(call_id)
            case Ping(reply):
                if not self.launch.alive():  # an idle runner's loss is noticed here, not by the next call
                    self._runner_lost(f"the runner of pool {self.launch.pool} is gone")
                reply.resolve(self.clock())
            case ForceBreaker(state):
                self._breaker_moved(self.breaker.force(state, "operator"))
            case Drain(reply, hand_back):
                if hand_back is not None:
                    for call in self._take_queued():
                        self.breaker.record_neutral(call.call_id)
                        hand_back(call)
                self.draining.append(reply)
                self._maybe_drained()
            case Configure(settings, policy):
                self._configure(settings, policy)
            case Disable(reason, reply):
                self._disable(reason, reply)
            case Restart(reason):
                raise OperatorRestart(reason)
            case _:
                raise TypeError(f"{self.name} actor got an unknown message {message!r}")
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        """Die cleanly: kill what runs, and leave the answers to whoever supervises.

        A supervisor keeps every call it routed until it is answered, so it
        answers the running ones (`actor_restarted`) and hands the queued
        ones — and any still unread in this mailbox — to the next
        incarnation. Without a supervisor, this actor answers them itself.
        """
        reason = f"{getattr(exception_type, '__name__', exception_type)}: {exception_value}"
        running = self._take_running()
        if self.parent is None:
            for entry in running:
                message = f"{self.name} crashed while the call ran ({reason})"
                entry.call.reply.resolve(entry.call.failure(ErrorType.ACTOR_RESTARTED, message, retry_after_sec=0.0))
            for call in self._take_queued():
                message = f"{self.name} crashed before the call started ({reason})"
                call.reply.resolve(call.failure(ErrorType.ACTOR_RESTARTED, message))
        self._close(wait=False)
        self._tell_parent(ActorCrashed(self.name, self.incarnation, reason))
        self._release_launch()

    def on_stop(self) -> None:
        """Stopped: end every process first, then answer what is left as cancelled.

        A retired incarnation answers nothing: its calls are the supervisor's.
        """
        running = self._take_running()
        queued = self._take_queued()
        self._close(wait=True)  # runner threads return once their process groups are gone
        self._release_launch()
        if self.retired.is_set():
            return
        for entry in running:
            outcome = entry.call.failure(ErrorType.CANCELLED, f"{self.name} stopped while the call ran")
            self._answer(entry.call, outcome, ran=True)
        for call in queued:
            outcome = call.failure(ErrorType.CANCELLED, f"{self.name} stopped before the call started")
            self._answer(call, outcome, ran=False)

    def _release_launch(self) -> None:
        try:
            self.launch.close()
        except Exception:  # a runner that cannot be released is its cluster's to reap
            logger.exception("%s could not release its runner", self.name)

    def _take_running(self) -> list[_Running]:
        taken = list(self.running.values())
        self.running.clear()
        for running in taken:
            if running.run is not None:
                running.run.cancel()
        return taken

    def _take_queued(self) -> list[Call]:
        taken = list(self.queue.values())
        self.queue.clear()
        return taken

    def _close(self, *, wait: bool) -> None:
        for reply in self.draining:
            reply.resolve(None)
        # Every submitted run still gets its runner: a spawned process is only ever ended by the run that supervises it.
        self._pool.shutdown(wait=wait)

    # --- admission --------------------------------------------------------------

    def _admit(self, call: Call) -> None:
        if call.reply.done:
            return  # answered while it waited in the mailbox (cancelled, or swept after a crash)
        if call.cancel_requested:
            self._refuse(call, ErrorType.CANCELLED, "the call was cancelled before it started")
            return
        if self.disabled_reason is not None:
            self._refuse(call, ErrorType.TOOL_DISABLED, self.disabled_reason)
            return
        if self.draining:
            self._refuse(call, ErrorType.CANCELLED, f"{self.name} is stopping and admits no new calls")
            return
        admission = self.breaker.allow(call.call_id)
        self._breaker_moved(admission.transition)
        if not admission.allowed:
            retry = round(admission.retry_after_sec or 0.0, 3)
            message = f"{self.name} is failing repeatedly; its circuit is open for another {retry:g}s"
            self._refuse(call, ErrorType.CIRCUIT_OPEN, message, retry_after_sec=retry)
            return
        if len(self.running) < self.settings.concurrency:
            self._start(call)
        elif len(self.queue) < self.settings.max_queue:
            self.queue[call.call_id] = call
            self._tell_parent(CallQueued(self.name, call.call_id))
        else:
            if admission.trial:
                self.breaker.record_neutral(call.call_id)
            message = f"{self.name} is running {len(self.running)} calls with {len(self.queue)} queued, its limit"
            self._refuse(call, ErrorType.RESOURCE_EXHAUSTED, message, retry_after_sec=self._retry_hint())

    def _configure(self, settings: ToolSettings, policy: PolicySettings | None) -> None:
        """Limits change between calls: more room starts queued calls now; less lets running ones finish."""
        self.settings = settings
        self.breaker.configure(settings.breaker)
        self.launch.configure(settings, policy)
        self._start_queued()

    def _disable(self, reason: str, reply: Reply[None]) -> None:
        """Out of service: the queue is answered now, running calls finish, then `reply` resolves."""
        self.disabled_reason = reason
        for call in self._take_queued():
            self.breaker.record_neutral(call.call_id)
            self._refuse(call, ErrorType.TOOL_DISABLED, reason)
        self.draining.append(reply)
        self._maybe_drained()

    def _refuse(self, call: Call, error_type: ErrorType, message: str, *, retry_after_sec: float | None = None) -> None:
        """Answer a call that will not run."""
        self._answer(call, call.failure(error_type, message, retry_after_sec=retry_after_sec), ran=False)

    def _answer(self, call: Call, outcome: CallOutcome, *, ran: bool) -> bool:
        """Answer and count a call, once; the count is sent before the caller can see the answer."""
        return call.reply.resolve(outcome, before=lambda o: self._report_finished(call, outcome_label(o), ran=ran))

    def _retry_hint(self) -> float:
        """A rough wait for a free slot: the age of the oldest running call, at least a second."""
        now = self.clock()
        oldest = min((r.started_at for r in self.running.values()), default=now)
        return round(max(1.0, now - oldest), 3)

    # --- running ----------------------------------------------------------------

    def _start(self, call: Call) -> None:
        call.started = True
        self._tell_parent(CallStarted(self.name, call.call_id))
        fault = self.faults(self.name, call.call_id)
        if fault is not None and fault.kind is FaultKind.CRASH:
            # Crash while handling the call: it counts as running, so it gets actor_restarted.
            self.running[call.call_id] = _Running(call, None, self.clock())
            raise InjectedCrash(f"injected crash while handling call {call.call_id}")
        if fault is not None and fault.kind is FaultKind.HANG:
            self.running[call.call_id] = _Running(call, None, self.clock())
            fault.hang(self.retired)
        if fault is not None and fault.kind is FaultKind.RUNNER_LOST:
            self.launch.lose()  # the run below finds its runner gone
        request = RunRequest(
            argv=call.prepared.argv,
            timeout_sec=call.prepared.timeout_sec,
            stdout_cap=self.settings.stdout_cap_bytes,
            stderr_cap=self.settings.stderr_cap_bytes,
            kill_grace_sec=self.settings.kill_grace_sec,
            env=self.spec.run_environment(self.settings),
        )
        shaping = fault.shaping() if fault is not None else None
        run = self.launch(call.prepared, request, self._progress_reader(call), shaping)
        call.run = run
        self.running[call.call_id] = _Running(call, run, self.clock())
        if fault is not None and fault.kind is FaultKind.FAIL:
            self._pool.submit(self._fail_without_running, call, fault)
        else:
            self._pool.submit(self._execute, call, run, fault)

    def _progress_reader(self, call: Call) -> Callable[[str], None] | None:
        sink = call.progress
        if sink is None:
            return None
        progress_of = self.spec.progress

        def on_line(line: str) -> None:
            percent = progress_of(line)
            if percent is not None:
                sink(percent, 100.0, None)

        return on_line

    def _runner_lost(self, message: str) -> None:
        """The pool's runner is gone, and every run it held with it: answer them, then die so it is restarted."""
        for entry in self._take_running():
            lost = entry.call.failure(ErrorType.NODE_LOST, message, retry_after_sec=NODE_LOST_RETRY_SEC)
            self._answer(entry.call, lost, ran=True)
        raise RunnerLost(message)

    def _progress_edge(self, call: Call, run: Run, percent: float, what: str) -> None:
        """Runner thread: tell a caller who asked for progress that the process started or ended.

        Short scans report nothing of their own, so these two are what such a
        caller sees; a process that never started reports neither.
        """
        if call.progress is not None and run.started:
            call.progress(percent, 100.0, f"{self.name} {what}")

    def _execute(self, call: Call, run: Run, fault: Fault | None) -> None:
        """Runner thread: run the process, build the answer, report it to the actor."""
        try:
            if fault is not None:
                fault.before_run(run)
            run.spawn()
            on_spawn, pid = call.on_spawn, run.pid
            if on_spawn is not None and pid is not None:
                _bookkeep(lambda: on_spawn(pid, run.home), call)
            self._progress_edge(call, run, 0.0, "started")
            try:
                result = run.run()
            finally:
                if call.on_reaped is not None and run.pid is not None:
                    _bookkeep(call.on_reaped, call)
            self._progress_edge(call, run, 100.0, "ended")
            outcome, verdict = outcome_from_run(self.spec, call.call_id, call.prepared, result)
            lost = result.runner_died
        except Exception:  # noqa: BLE001 - whatever breaks in a runner, the call still gets its answer
            outcome = call.failure(ErrorType.INTERNAL, "the runner failed: " + traceback.format_exc(limit=3))
            verdict, lost = Verdict.NEUTRAL, False
        self._report_run(Finished(call.call_id, outcome, verdict, lost), call)

    def _fail_without_running(self, call: Call, fault: Fault) -> None:
        stderr = f"injected failure ({fault.describe()})\n".encode()
        result = RunResult.no_process(returncode=fault.exit_code, stderr=stderr, pool=self.launch.pool)
        outcome, verdict = outcome_from_run(self.spec, call.call_id, call.prepared, result)
        self._report_run(Finished(call.call_id, outcome, verdict), call)

    def _report_run(self, finished: Finished, call: Call) -> None:
        """Runner thread: the one thing a runner does with the actor is tell it how the run ended."""
        try:
            self.actor_ref.tell(finished)
        except pykka.ActorDeadError:
            # The actor died while this ran. A supervisor answers the call when it
            # sweeps the dead incarnation; without one, this is the answer.
            if self.parent is None:
                call.reply.resolve(finished.outcome)

    def _finish(self, call_id: str, outcome: CallOutcome, verdict: Verdict, *, runner_lost: bool = False) -> None:
        """Answer a finished run and start what waits; a run that lost its runner starts nothing on it."""
        running = self.running.pop(call_id, None)
        if running is not None:
            self._judge(call_id, verdict)
            self._answer(running.call, outcome, ran=True)
        if runner_lost:  # the queue goes to the next incarnation's runner, not to this dead one
            self._runner_lost(outcome.error.message if outcome.error is not None else "the runner was lost")
        if running is None:
            return  # answered already (cancelled while queued, or abandoned)
        self._start_queued()
        self._maybe_drained()

    def _judge(self, call_id: str, verdict: Verdict) -> None:
        """Feed the breaker, naming the call: while half-open only the trial call's result counts."""
        if verdict is Verdict.SUCCESS:
            self._breaker_moved(self.breaker.record_success(call_id))
        elif verdict is Verdict.FAILURE:
            self._breaker_moved(self.breaker.record_failure(call_id))
        else:
            self.breaker.record_neutral(call_id)

    def _start_queued(self) -> None:
        while self.queue and len(self.running) < self.settings.concurrency:
            _, call = self.queue.popitem(last=False)
            self._start(call)

    def _cancel(self, call_id: str) -> None:
        call = self.queue.pop(call_id, None)
        if call is not None:
            self.breaker.record_neutral(call_id)  # frees the probe if this was the half-open trial
            self._refuse(call, ErrorType.CANCELLED, "the call was cancelled before it started")
            self._maybe_drained()
            return
        running = self.running.get(call_id)
        if running is not None and running.run is not None:
            running.run.cancel()  # the runner reports back with a cancelled result

    def _maybe_drained(self) -> None:
        if self.draining and not self.running and not self.queue:
            for reply in self.draining:
                reply.resolve(None)

    def _breaker_moved(self, transition: Transition | None) -> None:
        """Report a breaker transition; an opening breaker answers every queued call at once.

        Calls queued before the tool started failing would otherwise each run
        against it; they get `circuit_open` with the same retry hint a new
        call gets.
        """
        if transition is None:
            return
        self._tell_parent(BreakerChanged(self.name, transition.old.value, transition.new.value, transition.reason))
        if transition.new is not BreakerState.OPEN or not self.queue:
            return
        retry = round(self.breaker.retry_after() or 0.0, 3)
        message = f"{self.name} is failing repeatedly ({transition.reason}); its circuit is open for another {retry:g}s"
        for call in self._take_queued():
            self._refuse(call, ErrorType.CIRCUIT_OPEN, message, retry_after_sec=retry)
        self._maybe_drained()

    # --- reporting --------------------------------------------------------------

    def _report_finished(self, call: Call, outcome: str, *, ran: bool) -> None:
        duration = self.clock() - call.admitted_at
        self._tell_parent(CallFinished(self.name, call.call_id, outcome, duration, ran))

    def _tell_parent(self, event: Any) -> None:
        if self.parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(event)


def _bookkeep(hook: Callable[[], None], call: Call) -> None:
    """Run a bookkeeping hook on the runner thread; whatever it does, the run's supervision goes on."""
    try:
        hook()
    except Exception:  # bookkeeping must never keep a process from its supervision
        logger.exception("a run's bookkeeping hook failed; the run goes on", extra={"call_id": call.call_id})
