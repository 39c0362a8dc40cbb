"""Name look-ups with a deadline, on at most `limit` threads, never on the caller's.

A caller gets the answer, or a `TimeoutError` once `timeout_sec` has passed, and moves on: a stuck
resolver finishes alone on its thread, and a look-up whose caller gave up before it got a thread
never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, wait

from actors.policy import Resolver
from actors.settings import IPAddress

Answer = Sequence[IPAddress]


class Lookup:
    """One name's look-up in flight; `answer` is a resolver for that name alone."""

    def __init__(self, name: str, future: Future[Answer], timeout_sec: float, limit: int) -> None:
        self.name = name
        self._future = future
        self._timeout_sec = timeout_sec
        self._limit = limit
        self._deadline = time.monotonic() + timeout_sec

    def wait(self) -> None:
        """Block until the answer is in or the deadline has passed."""
        wait([self._future], timeout=self._remaining())

    async def settled(self) -> None:
        """The same without blocking the event loop; cancelling the awaiting task gives the look-up up."""
        with contextlib.suppress(Exception):  # the time-out, or the resolver's error: `answer` raises it
            await asyncio.wait_for(asyncio.wrap_future(self._future), self._remaining())

    def answer(self, name: str) -> Answer:
        """The resolver's answer (or its error); `TimeoutError` if it is not in yet."""
        if name != self.name:
            raise LookupError(f"{name} was not looked up")
        if self._future.done() and not self._future.cancelled():
            return self._future.result()
        got_a_thread = self._future.running()
        self._future.cancel()  # leaves the line if still waiting there
        waited = f"lookup timed out after {self._timeout_sec:g} s"
        if got_a_thread:
            raise TimeoutError(waited)
        raise TimeoutError(f"{waited} waiting for a free look-up thread (all {self._limit} are busy)")

    def _remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())


class Lookups:
    """A blocking resolver run off its callers' threads, `limit` look-ups at a time, each given up after `timeout_sec`.

    Past the bound, look-ups wait in line within their own deadline: no thread
    is made for them, and one that times out there is dropped unrun.
    """

    def __init__(self, resolver: Resolver, *, timeout_sec: float, limit: int) -> None:
        self.timeout_sec = timeout_sec
        self.limit = limit
        self._resolver = resolver
        self._lock = threading.Lock()
        self._threads = 0
        self._line: deque[tuple[str, Future[Answer]]] = deque()

    def start(self, name: str) -> Lookup:
        future: Future[Answer] = Future()
        with self._lock:
            self._line.append((name, future))
            new_thread = self._threads < self.limit
            if new_thread:
                self._threads += 1
            else:
                self._line = deque(entry for entry in self._line if not entry[1].cancelled())
        if new_thread:
            try:
                threading.Thread(target=self._work, name="labrecon-lookup", daemon=True).start()
            except BaseException:
                future.cancel()
                with self._lock:
                    self._threads -= 1
                raise
        return Lookup(name, future, self.timeout_sec, self.limit)

    def resolve(self, name: str) -> Answer:
        """A resolver with the deadline: blocks its caller at most `timeout_sec`."""
        lookup = self.start(name)
        lookup.wait()
        return lookup.answer(name)

    @property
    def threads(self) -> int:
        """Look-up threads alive now (at most `limit`)."""
        with self._lock:
            return self._threads

    def _work(self) -> None:
        while True:
            with self._lock:
                entry = self._next()
                if entry is None:
                    self._threads -= 1
                    return
            name, future = entry
            try:
                answer = self._resolver(name)
            except BaseException as exc:  # noqa: BLE001 - whatever the resolver raises is its caller's answer
                future.set_exception(exc)
            else:
                future.set_result(answer)

    def _next(self) -> tuple[str, Future[Answer]] | None:
        """The first look-up in line whose caller still waits (the rest are dropped)."""
        while self._line:
            entry = self._line.popleft()
            if entry[1].set_running_or_notify_cancel():
                return entry
        return None
