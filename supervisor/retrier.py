"""Each call from its admission to its one answer, tried again after a transient failure.

An attempt is a new `Call` (same id, prepared call and scan) answered into a reply of its own; the
caller's reply gets the last attempt's answer, listing the earlier ones (`supervisor.retries` decides
what is retried). Between attempts a call waits on a timer of its own, holding no actor's thread and
no event loop, and belongs to this module alone: `cancel` and `close` answer it at once.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.reply import Reply
from actors.results import CallError, CallOutcome, ErrorType, RetriedAttempt
from actors.settings import RetrySettings
from actors.tool import Call
from supervisor.retries import Retry, next_retry, retried_attempt, with_retries

__all__ = ["AttemptFactory", "Retrier"]

logger = logging.getLogger(__name__)

_RANDOM = random.Random()

AttemptFactory = Callable[[Reply[CallOutcome], int], Call]
"""(the attempt's reply, its number from 1) -> the `Call` that makes the attempt."""


@dataclass(eq=False)
class _RetryingCall:
    """A call from its admission to its answer; its fields change under `lock` only."""

    call_id: str
    tool: str
    settings: RetrySettings
    make_attempt: AttemptFactory
    reply: Reply[CallOutcome]  # the caller's
    lock: threading.RLock = field(default_factory=threading.RLock)  # held while an attempt is submitted
    attempts: int = 0
    current: Call | None = None
    retried: list[RetriedAttempt] = field(default_factory=list)
    timer: threading.Timer | None = None  # set while the call waits for its next attempt
    cancelled: bool = False  # no further attempt: the caller asked to cancel
    answered: bool = False


class _AttemptReply(Reply[CallOutcome]):
    """One attempt's answer: counted by whoever gives it, then handed to the retrier."""

    __slots__ = ("_ended",)

    def __init__(self, ended: Callable[[CallOutcome], None]) -> None:
        super().__init__()
        self._ended = ended

    def _deliver(self, value: CallOutcome) -> None:
        self._ended(value)


class Retrier:
    """Every call in flight of one runtime, from submission to its one answer.

    A call between attempts is in no tool's slot, so it waits here, on a `threading.Timer`, rather
    than on the supervisor's restart timers: one owner, which a cancel or a stopping runtime asks.
    Each call's lock (held while an attempt is handed over) orders its attempts' ends, its timer,
    a cancel and the close.
    """

    def __init__(
        self,
        submit: Callable[[Call], None],
        *,
        on_retry: Callable[[str, str], None],
        on_refused: Callable[[str, ErrorType], None],
        spread: Callable[[], float] = lambda: _RANDOM.uniform(-1.0, 1.0),
    ) -> None:
        """`submit` hands an attempt to its tool; `on_retry(slot, reason)` counts a retry, and
        `on_refused(slot, error_type)` a call answered here (the slot its attempts go to); `spread` draws from
        [-1, 1] for the jitter."""
        self._submit = submit
        self._on_retry = on_retry
        self._on_refused = on_refused
        self._spread = spread
        self._lock = threading.Lock()
        self._calls: dict[str, _RetryingCall] = {}
        self._closed = False

    def submit(
        self, call_id: str, tool: str, settings: RetrySettings, make_attempt: AttemptFactory, reply: Reply[CallOutcome]
    ) -> None:
        """Make the call's first attempt now; `reply` is answered once, after its last."""
        call = _RetryingCall(call_id, tool, settings, make_attempt, reply)
        with self._lock:
            self._calls[call_id] = call
        reply.on_resolved(lambda _outcome: self._forget(call_id, call))
        with call.lock:
            self._attempt(call)

    def cancel(self, call_id: str) -> bool:
        """No further attempt for this call; True if it was waiting for one, and is answered `cancelled` now.

        False leaves the attempt under way (if any) to be cancelled where it runs.
        """
        with self._lock:
            call = self._calls.get(call_id)
        if call is None:
            return False
        return self._answer_if_waiting(call, "the call was cancelled while it waited to be tried again", cancel=True)

    def tool_disabled(self, tool: str, reason: str) -> int:
        """Calls of `tool` waiting to be tried again are answered `tool_disabled` now; returns how many."""
        with self._lock:
            waiting = [call for call in self._calls.values() if call.tool == tool]
        answered = 0
        for call in waiting:
            answered += self._answer_if_waiting(call, reason, error_type=ErrorType.TOOL_DISABLED)
        return answered

    def close(self) -> None:
        """Retry nothing more: calls waiting for an attempt are answered `cancelled` at once."""
        with self._lock:
            self._closed = True
            waiting = list(self._calls.values())
        for call in waiting:
            self._answer_if_waiting(call, "the runtime is stopping")

    # --- inside -----------------------------------------------------------------------

    def _attempt(self, call: _RetryingCall) -> None:
        """With `call.lock` held: hand the next attempt to its tool."""
        number = call.attempts + 1
        attempt = call.make_attempt(_AttemptReply(lambda outcome: self._ended(call, outcome)), number)
        call.current, call.attempts = attempt, number
        self._submit(attempt)

    def _ended(self, call: _RetryingCall, outcome: CallOutcome) -> None:
        """On the thread that answered an attempt: wait for another, or answer the caller."""
        try:
            retry, stopped = self._arrange_retry(call, outcome)
        except Exception:  # a timer that cannot start, say: the attempt's answer is the call's
            logger.exception("a retry could not be arranged; the call is answered as it stands")
            with call.lock:
                if call.timer is not None:
                    call.timer.cancel()
                call.timer, call.answered = None, True
            retry, stopped = None, None
        if retry is not None:
            self._on_retry(_counted_as(call), retry.reason.value)
            return
        if stopped is not None:  # it would have been tried again, but was cancelled meanwhile
            outcome = outcome.model_copy(update={"error": CallError(error_type=ErrorType.CANCELLED, message=stopped)})
        call.reply.resolve(with_retries(outcome, *_so_far(call)))

    def _arrange_retry(self, call: _RetryingCall, outcome: CallOutcome) -> tuple[Retry | None, str | None]:
        """Start the wait for the next attempt; or mark the call answered, saying why a transient failure
        was not tried again (cancelled meanwhile, or the runtime stopping) if that is why."""
        with call.lock:
            done = len(call.retried)
            retry = next_retry(outcome, retries_done=done, settings=call.settings, spread=self._spread())
            if retry is None or call.cancelled or self._closed:
                call.answered = True
                if retry is None:
                    return None, None
                return None, "the call was cancelled" if call.cancelled else "the runtime is stopping"
            call.retried.append(retried_attempt(outcome))
            call.timer = threading.Timer(retry.delay_sec, self._backoff_over, args=(call,))
            call.timer.daemon = True
            call.timer.start()
            return retry, None

    def _backoff_over(self, call: _RetryingCall) -> None:
        """On the call's timer thread: make the next attempt, unless the call was answered meanwhile."""
        with call.lock:
            if call.timer is None:
                return  # cancelled, or the runtime stopping, got here first
            call.timer = None
            last = call.current
            try:
                self._attempt(call)
                return
            except Exception:
                logger.exception("a retry could not be submitted", extra={"call_id": call.call_id})
                call.answered = True
        assert last is not None
        outcome = with_retries(last.failure(ErrorType.INTERNAL, "the call could not be tried again"), *_so_far(call))
        call.reply.resolve(outcome, before=lambda _answer: self._on_refused(_counted_as(call), ErrorType.INTERNAL))

    def _answer_if_waiting(
        self, call: _RetryingCall, message: str, *, cancel: bool = False, error_type: ErrorType = ErrorType.CANCELLED
    ) -> bool:
        """Answer now (`cancelled`, unless told otherwise) if the call waits for its next attempt; `cancel` rules
        out any further one."""
        with call.lock:
            call.cancelled = call.cancelled or cancel
            timer, call.timer = call.timer, None
            if timer is None or call.answered:
                return False
            timer.cancel()
            call.answered = True
        assert call.current is not None
        answer = with_retries(call.current.failure(error_type, message), *_so_far(call))
        return call.reply.resolve(answer, before=lambda _answer: self._on_refused(_counted_as(call), error_type))

    def _forget(self, call_id: str, call: _RetryingCall) -> None:
        with self._lock:
            if self._calls.get(call_id) is call:
                del self._calls[call_id]


def _counted_as(call: _RetryingCall) -> str:
    """Where the call's numbers are kept: the slot its attempts go to ("nmap", or "nmap@dmz" on a pool)."""
    return call.current.prepared.slot if call.current is not None else call.tool


def _so_far(call: _RetryingCall) -> tuple[int, list[RetriedAttempt]]:
    with call.lock:
        return call.attempts, list(call.retried)
