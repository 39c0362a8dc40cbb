"""A request's events on their way to the client: numbered, bounded, resumable from any event still kept.

A stream carries the request's notifications and then its reply to one connection at a time (a newer one
takes over). It keeps its newest `limit` events, so a reader far behind misses old progress, never the
reply. Opened through a session's `SessionStreams`, its events have ids "<stream>-<event>", unique in the
session, and `find` leads a `Last-Event-ID` back to that stream alone. A session keeps a stream until its
end is delivered; while it keeps one that gave out an id, `resume_deadline` says how long its client is
waited for: always while a connection reads it, `resume_window` after the last one left.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from transports.http.exchange import event_frame

__all__ = ["KEEP_FINISHED", "REPLAY_EVENTS", "Reader", "ResponseStream", "SessionStreams"]

log = logging.getLogger("labrecon.http.mcp")

REPLAY_EVENTS: Final = 256
"""Events a stream keeps for replay (at ~200 bytes a progress notification, about 50 KB)."""

KEEP_FINISHED: Final = 8
"""Finished streams a session keeps for a client that has not read their end yet; older ones are forgotten."""

_EVENT_ID: Final = re.compile(r"([1-9][0-9]{0,8})-(0|[1-9][0-9]{0,8})")


class Reader:
    """One connection reading a stream; `replaced` is set when another connection takes the stream over."""

    def __init__(self) -> None:
        self.replaced = asyncio.Event()


class ResponseStream:
    """One request's events: appended as they happen, read from any point still kept.

    `request` is the task serving the request. Once a client has been given
    an event id (`primed`), losing its connection no longer cancels the
    request: it is cancelled only if no connection resumes the stream within
    the window `detach` is given.
    """

    def __init__(
        self, number: int = 0, limit: int = REPLAY_EVENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.number = number  # 0: not resumable, its events carry no id
        self.last = 0  # number of the newest event
        self.finished = False
        self.primed = False
        self.reply: Any = None
        self.reader: Reader | None = None
        self.request: asyncio.Task[Any] | None = None
        self._events: deque[tuple[int, Any]] = deque(maxlen=limit)  # (number, message), framed when sent
        self._changed = asyncio.Event()
        self._abandon: asyncio.TimerHandle | None = None
        self._clock = clock
        self._left_until: float | None = None  # set when the last reader leaves: the end of its resume window

    @property
    def resume_deadline(self) -> float | None:
        """Until when a client may still come back for this stream: no end while a connection reads it,
        the end of the resume window once the last one left; None while it has given out no id."""
        if not self.primed:
            return None
        return math.inf if self.reader is not None else self._left_until

    @property
    def resumable(self) -> bool:
        return self.number > 0

    @property
    def priming_id(self) -> str:
        """The id of the empty event that opens the stream, from which everything can be replayed."""
        return self._event_id(0)

    @property
    def holds_only_its_reply(self) -> bool:
        """Finished with nothing sent but the reply (or nothing at all): it can be answered in one piece."""
        return self.finished and self.last == (0 if self.reply is None else 1)

    def append(self, message: Any) -> None:
        """Add a message (nothing follows the reply)."""
        if self.finished:
            return
        self.last += 1
        self._events.append((self.last, message))
        self._wake()

    def finish(self, reply: Any) -> None:
        """The request is over: `reply` (None when it has none) is the stream's last event."""
        if self.finished:
            return
        if reply is not None:
            self.append(reply)
        self.reply = reply
        self.finished = True
        self._cancel_abandon()
        self._wake()

    def after(self, cursor: int) -> list[tuple[int, bytes]]:
        """The kept events numbered above `cursor`, oldest first, as (number, frame).

        A message is framed only when it is sent: one answered in one piece is never framed at all.
        """
        return [
            (number, event_frame(message, event_id=self._event_id(number) if self.resumable else None))
            for number, message in self._events
            if number > cursor
        ]

    def ended_for(self, cursor: int) -> bool:
        """Whether a reader at `cursor` has had everything this stream will ever hold."""
        return self.finished and cursor >= self.last

    async def wait_beyond(self, cursor: int) -> None:
        """Return once there is an event above `cursor`, or the stream has finished."""
        while self.last <= cursor and not self.finished:
            await self._changed.wait()

    def attach(self) -> Reader:
        """A connection starts reading; the one reading until now is told to stop."""
        if self.reader is not None:
            self.reader.replaced.set()
        self._cancel_abandon()
        self.reader = Reader()
        return self.reader

    def detach(self, reader: Reader, resume_window: float) -> None:
        """A connection stopped reading: its client has `resume_window` to come back, and a primed,
        unfinished stream nobody resumes by then is given up on."""
        if self.reader is not reader:
            return
        self.reader = None
        self._left_until = self._clock() + resume_window
        if self.primed and not self.finished and self.request is not None:
            self._cancel_abandon()
            self._abandon = asyncio.get_running_loop().call_later(resume_window, self._give_up)

    def _give_up(self) -> None:
        self._abandon = None
        if self.reader is None and self.request is not None and not self.request.done():
            log.info("no client resumed an event stream; its request is cancelled", extra={"stream": self.number})
            self.request.cancel()

    def _cancel_abandon(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None

    def _event_id(self, event: int) -> str:
        return f"{self.number}-{event}"

    def _wake(self) -> None:
        # Each waiter holds the event it started waiting on; a fresh one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()


class SessionStreams:
    """A session's resumable streams: numbered as they open; the running ones and the newest finished kept."""

    def __init__(self, keep_finished: int = KEEP_FINISHED, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_finished = keep_finished
        self._clock = clock
        self._streams: dict[int, ResponseStream] = {}
        self._opened = 0

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def resume_deadline(self) -> float | None:
        """Until when a client may still come back for events of these streams not yet delivered (the latest
        of their `resume_deadline`s); None when no stream that gave out an id is left undelivered."""
        deadlines = [deadline for stream in self._streams.values() if (deadline := stream.resume_deadline) is not None]
        return max(deadlines, default=None)

    def open(self, limit: int = REPLAY_EVENTS) -> ResponseStream:
        finished = [stream for stream in self._streams.values() if stream.finished]
        for stream in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._streams[stream.number]
        self._opened += 1
        stream = ResponseStream(self._opened, limit, self._clock)
        self._streams[stream.number] = stream
        return stream

    def forget(self, stream: ResponseStream) -> None:
        """Drop a stream nobody will resume: its end was delivered, or it never gave out an id."""
        if self._streams.get(stream.number) is stream:
            del self._streams[stream.number]

    def find(self, last_event_id: str) -> tuple[ResponseStream, int] | None:
        """The stream a `Last-Event-ID` came from, and the number of that event; None if it names none of ours."""
        match = _EVENT_ID.fullmatch(last_event_id.strip())
        if match is None:
            return None
        stream = self._streams.get(int(match.group(1)))
        event = int(match.group(2))
        if stream is None or not stream.primed or event > stream.last:
            return None
        return stream, event
