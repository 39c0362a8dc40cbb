"""Where an actor's answer meets its caller, exactly once.

Actors run on their own threads; callers live on an asyncio loop or on a
plain thread. A `Reply` hides which: the actor calls `resolve()` from any
thread and the caller's waiting primitive completes on the caller's side
(`loop.call_soon_threadsafe` for asyncio, so the loop is never blocked and
never touched from a foreign thread). A second `resolve()` is ignored and
reported as `False`, which is what lets restarts, timeouts and shutdown race
to answer a call without ever answering it twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Reply(Generic[T]):
    """A one-shot, thread-safe answer slot.

    Answering is two steps when the answerer must do something in between:
    `claim()` wins the right to answer (exactly one caller ever does), then
    `deliver()` hands the value over. The actors use the gap to record the
    outcome in their books, so a call is counted once, by whoever answers it,
    and before its caller can see the answer.
    """

    __slots__ = ("_lock", "_claimed", "_delivered", "_value", "_callbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claimed = False
        self._delivered = False
        self._value: T | None = None
        self._callbacks: list[Callable[[T], None]] = []

    @property
    def done(self) -> bool:
        """True once somebody has claimed the answer (it may still be on its way)."""
        return self._claimed

    def claim(self) -> bool:
        """Win the right to answer; False if somebody else already has."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def deliver(self, value: T) -> None:
        """Hand over the answer; only after a successful `claim()`.

        The `on_resolved` callbacks run first, so a caller who sees the answer
        also sees the books it closed (its call id free again, say); one that
        fails is logged and never keeps the answer from its caller.
        """
        with self._lock:
            if not self._claimed or self._delivered:
                raise RuntimeError("deliver() needs a claim and happens once")
            self._delivered = True
            self._value = value
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(value)
            except Exception:
                logger.exception("a reply callback failed; the answer is delivered all the same")
        self._deliver(value)

    def resolve(self, value: T) -> bool:
        """Claim and deliver in one step; False if the call was already answered."""
        if not self.claim():
            return False
        self.deliver(value)
        return True

    def on_resolved(self, callback: Callable[[T], None]) -> None:
        """Run `callback(value)` on the delivering thread as the answer is handed over (here and now if it was)."""
        with self._lock:
            if not self._delivered:
                self._callbacks.append(callback)
                return
            value = self._value
        callback(value)  # type: ignore[arg-type]

    def _deliver(self, value: T) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ThreadReply(Reply[T]):
    """For callers on ordinary threads: wait on `.future`."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        super().__init__()
        self.future: Future[T] = Future()

    def _deliver(self, value: T) -> None:
        self.future.set_result(value)

    def wait(self, timeout: float | None = None) -> T:
        return self.future.result(timeout)


class AsyncReply(Reply[T]):
    """For callers on an asyncio loop: `await reply.future`."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self.loop = loop or asyncio.get_running_loop()
        self.future: asyncio.Future[T] = self.loop.create_future()

    def _deliver(self, value: T) -> None:
        try:
            self.loop.call_soon_threadsafe(_set_if_pending, self.future, value)
        except RuntimeError:
            # The caller's loop is closed: nobody is left to read the answer.
            pass


def _set_if_pending(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
