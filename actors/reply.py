"""Where an actor's answer meets its caller, exactly once.

`resolve()` may be called from any thread and by several racers (a finished run, a crash sweep, a
cancel, shutdown); the first wins and every later one returns False. The caller's side completes on
its own terms: a plain future for a thread, `loop.call_soon_threadsafe` for an asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Reply(Generic[T]):
    """A one-shot, thread-safe answer slot."""

    __slots__ = ("_callbacks", "_lock", "_resolved", "_value")
    _value: T  # set by the winning `resolve()`, before `_callbacks` becomes None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resolved = False
        self._callbacks: list[Callable[[T], None]] | None = []  # None once they have been taken to run

    @property
    def done(self) -> bool:
        """True once somebody has won the right to answer (the answer may still be on its way)."""
        return self._resolved

    def resolve(self, value: T, before: Callable[[T], None] | None = None) -> bool:
        """Answer with `value` unless somebody already has; False if this answer lost.

        Only the winner runs `before(value)`, then the `on_resolved` callbacks, and only then can
        the caller see the answer: whoever answers a call records its outcome first, once. A hook
        that fails is logged and never keeps the answer from its caller.
        """
        with self._lock:
            if self._resolved:
                return False
            self._resolved = True
        if before is not None:
            self._run(before, value)
        with self._lock:  # callbacks added while `before` ran are taken too
            self._value = value
            callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            self._run(callback, value)
        self._deliver(value)
        return True

    @staticmethod
    def _run(hook: Callable[[T], None], value: T) -> None:
        try:
            hook(value)
        except Exception:
            logger.exception("a reply callback failed; the answer is delivered all the same")

    def on_resolved(self, callback: Callable[[T], None]) -> None:
        """Run `callback(value)` on the answering thread, before the caller sees the answer (at once if answered)."""
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
            value = self._value
        callback(value)

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

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self.loop = loop or asyncio.get_running_loop()
        self.future: asyncio.Future[T] = self.loop.create_future()

    def _deliver(self, value: T) -> None:
        # A closed loop (RuntimeError) has nobody left to read the answer.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_set_if_pending, self.future, value)


def _set_if_pending(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
