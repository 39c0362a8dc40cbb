"""An actor inbox that lets bookkeeping wait for the next message that matters.

Every tool call sends its supervisor a few events (queued, started,
finished) that only update books: counters, gauges, the in-flight table.
A tool actor likewise hears of each run its runner has already answered.
Nobody waits on these, yet with an ordinary inbox each one wakes the
actor's thread, and on a busy daemon those wakeups cost more than the
bookkeeping itself. Here such messages are appended without waking the
reader. They are read, in order, as soon as anything else arrives — a status
or metrics query, a new call, a crash, a tick or ping — so whatever is
handled next sees books that include every message sent before it.
`max_deferred` bounds the backlog (and so memory) when nothing else happens
for a while.

It offers the three methods a pykka actor loop uses: `put`, `get`, `empty`.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["DeferringInbox"]


class DeferringInbox:
    def __init__(self, deferrable: Callable[[Any], bool], *, max_deferred: int = 512) -> None:
        self._deferrable = deferrable
        self._max_deferred = max_deferred
        self._items: deque[Any] = deque()
        # One token per wakeup owed to the reader; a token may find the items
        # already taken, and then the reader just waits again.
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()

    def put(self, envelope: Any) -> None:
        self._items.append(envelope)
        if not self._deferrable(envelope.message) or len(self._items) >= self._max_deferred:
            self._wakeups.put(None)

    def get(self) -> Any:
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                self._wakeups.get()

    def empty(self) -> bool:
        return not self._items
