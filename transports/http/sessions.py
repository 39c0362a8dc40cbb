"""The HTTP session table: who is connected, what they are running, and when they are gone.

Nothing over HTTP closes by itself, so this table owns every session, its tasks and their processes,
and no session, task or process outlives its client: closing a session (disconnect, DELETE, expiry,
shutdown, its token revoked) cancels its calls. Everything here runs on the server's event loop, except
`counts()`; other threads reach it through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from transports.http.response_streams import SessionStreams
from transports.http.rules import new_session_id
from transports.http.session_policy import Lifetimes, client_key, eviction_victim, expiry, sessions_of
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.session import Session

__all__ = [
    "STATELESS",
    "ClientSessionLimit",
    "HttpSession",
    "NotAccepting",
    "Outbox",
    "SessionKind",
    "SessionLimit",
    "SessionRefused",
    "SessionTable",
]

log = logging.getLogger("labrecon.sessions")

STATELESS = "http_stateless"
"""The `counts()` key for 2026-07-28 requests in progress (they own no session)."""

DEFAULT_OUTBOX_LIMIT = 1024


class SessionKind(StrEnum):
    SSE = "sse"
    HTTP = "http"


class SessionRefused(Exception):
    """No session can be opened now; `status` is the HTTP status the transports answer with."""

    status = 503


class SessionLimit(SessionRefused):
    """`max_sessions` sessions are open and every one is held; a new one must wait until one ends."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} sessions are open, the configured maximum, each with a call in flight, an open stream or "
            "a reply its client may still resume; retry shortly"
        )
        self.limit = limit


class ClientSessionLimit(SessionRefused):
    """This client address already holds `max_per_client` sessions."""

    status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this client address already holds {limit} sessions, the most one address may; end one (DELETE) "
            "or retry later"
        )
        self.limit = limit


class NotAccepting(SessionRefused):
    """The server is shutting down and opens nothing new."""


class Outbox:
    """Messages waiting for one reader (an event stream), in order.

    Replies are never dropped. Notifications marked droppable (progress)
    are, once `limit` messages are waiting: a reader that lags that far
    behind gains nothing from every intermediate step.
    """

    def __init__(self, limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Any, *, droppable: bool = False) -> bool:
        if self._closed:
            return False
        if droppable and len(self._items) >= self.limit:
            return False
        self._items.append(message)
        self._ready.set()
        return True

    def close(self) -> None:
        """No more messages; a reader still gets what was already waiting."""
        self._closed = True
        self._ready.set()

    async def get(self) -> Any | None:
        """The next message, or None once the outbox is closed and empty."""
        while True:
            if self._items:
                item = self._items.popleft()
                if not self._items and not self._closed:
                    self._ready.clear()
                return item
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()


@dataclass(eq=False)
class HttpSession:
    """One client's session: its dispatcher state, its event outbox and the tasks serving it."""

    id: str
    kind: SessionKind
    mcp: Session
    last_active: float
    client: str | None = None  # whose sessions this one counts against (`session_policy.client_key`)
    used: bool = False  # carried a message other than the handshake
    outbox: Outbox = field(default_factory=Outbox)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    streams: int = 0  # open standalone event streams (Streamable HTTP GET)
    resumable: SessionStreams = field(default_factory=SessionStreams, repr=False)  # POST streams a GET may resume
    closed: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def busy(self) -> bool:
        return any(not task.done() for task in self.tasks)

    def queue_notification(self, note: dict[str, Any]) -> None:
        """Queue a notification for the session's own stream (progress may be dropped when the reader lags)."""
        self.outbox.put(note, droppable=note.get("method") == "notifications/progress")

    @property
    def has_stream(self) -> bool:
        """A legacy SSE session is its stream; a Streamable HTTP one may hold a standalone stream."""
        return self.kind is SessionKind.SSE or self.streams > 0

    @property
    def resume_deadline(self) -> float | None:
        """Until when the client may come back for a resumable stream's undelivered events (see `SessionStreams`)."""
        return self.resumable.resume_deadline

    @property
    def short_id(self) -> str:
        return self.id[:8]


class SessionTable:
    """All open sessions of one HTTP server, bounded, expiring, and cancelled as a whole on shutdown.

    `max_sessions` bounds legacy SSE and Streamable HTTP together; one client address holds at most
    `max_per_client` (loopback is exempt, see `session_policy.client_key`). A session is idle when
    the client has sent nothing and no call of its has run for `idle_sec` (an open event stream is
    not activity: a client that hung with its stream open is what idle expiry is for), but never while
    it keeps a reply its client may still resume; one that carried nothing but its handshake and holds
    no stream goes after `unused_sec`. Closing a session
    cancels its calls through the dispatcher (`cancel_all`), which kills their process groups; a
    task still running `cancel_timeout` later is cancelled outright. 2026-07-28 requests own no
    session but are registered while in progress (`stateless`), so shutdown cancels them too.

    `unused_sec` defaults to `idle_sec` (no earlier expiry), `max_per_client` to no cap.
    """

    def __init__(
        self,
        dispatcher: McpDispatcher,
        *,
        max_sessions: int,
        idle_sec: float,
        unused_sec: float | None = None,
        max_per_client: int | None = None,
        cancel_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if idle_sec <= 0:
            raise ValueError("idle_sec must be > 0")
        if unused_sec is not None and unused_sec <= 0:
            raise ValueError("unused_sec must be > 0")
        if max_per_client is not None and max_per_client < 1:
            raise ValueError("max_per_client must be >= 1")
        self.dispatcher = dispatcher
        self.max_sessions = max_sessions
        self.lifetimes = Lifetimes(idle_sec=idle_sec, unused_sec=unused_sec if unused_sec is not None else idle_sec)
        self.max_per_client = max_per_client
        self.cancel_timeout = cancel_timeout
        self._clock = clock
        self._sessions: dict[str, HttpSession] = {}
        self._stateless: set[Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task[None] | None = None

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and start expiring idle sessions."""
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        if self._reaper is None or self._reaper.done():
            self._reaper = self._loop.create_task(self._reap_forever(), name="labrecon-session-reaper")

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def shutdown(self, grace: float = 0.0) -> None:
        """Open nothing new, give running calls `grace` seconds, then close every session.

        Closing cancels what is still running (each call answered `cancelled`
        to whoever still listens); tasks that outlast `cancel_timeout` after
        that are cancelled outright, so this returns with nothing left running.
        """
        self._accepting = False
        for mcp in self._every_mcp():  # a stream open for listening never ends by itself
            self.dispatcher.end_subscriptions(mcp)
        running = self._running()
        if running and grace > 0:
            log.info("waiting up to %gs for %d requests in progress", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        for session in list(self._sessions.values()):
            self.close(session, "server shutting down")
        for mcp in list(self._stateless):
            self.dispatcher.cancel_all(mcp)
        running = self._running()
        if running:
            _, stuck = await asyncio.wait(running, timeout=self.cancel_timeout)
            for task in stuck:
                task.cancel()
            if stuck:
                log.warning("%d requests ignored cancellation; abandoned", len(stuck))
                await asyncio.gather(*stuck, return_exceptions=True)
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None

    # --- sessions ---------------------------------------------------------------------

    def open(self, kind: SessionKind, mcp: Session, client: str | None = None) -> HttpSession:
        """A new session for the client at address `client`, making room for it if the table is full.

        A full table closes the session least likely to be missed that no call, stream or reply
        awaiting its client holds (`session_policy.eviction_victim`); only when every session is held is `SessionLimit`
        raised (503 with `Retry-After`: temporary and server-wide). One session too many for this
        client raises `ClientSessionLimit` (429 with `Retry-After`: this time it is the client's doing).

        Raises:
            NotAccepting: the server is shutting down.
            ClientSessionLimit: this client already holds `max_per_client` sessions.
            SessionLimit: the table is full and every session in it is held.
        """
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        self.expire()  # an expired session should not cost a live client its place
        key = client_key(client)
        if (
            key is not None
            and self.max_per_client is not None
            and sessions_of(self._sessions.values(), key) >= self.max_per_client
        ):
            raise ClientSessionLimit(self.max_per_client)
        if len(self._sessions) >= self.max_sessions:
            victim = eviction_victim(self._sessions.values(), self._clock())
            if victim is None:
                raise SessionLimit(self.max_sessions)
            self.close(victim, "evicted to make room for a new session")
        session_id = new_session_id()
        while session_id in self._sessions:  # pragma: no cover - 128 random bits
            session_id = new_session_id()
        session = HttpSession(
            id=session_id,
            kind=kind,
            mcp=mcp,
            last_active=self._clock(),
            client=key,
            resumable=SessionStreams(clock=self._clock),
        )
        self._sessions[session_id] = session
        log.info("session opened", extra={"session": session.short_id, "transport": kind.value})
        return session

    def get(self, session_id: str, kind: SessionKind) -> HttpSession | None:
        """The open session with this id, if it belongs to the transport asking."""
        session = self._sessions.get(session_id)
        if session is None or session.kind is not kind or session.closed:
            return None
        return session

    def touch(self, session: HttpSession, *, used: bool = False) -> None:
        """The client sent a message on `session`; `used` unless it was part of the handshake."""
        session.last_active = self._clock()
        session.used = session.used or used

    def spawn(self, session: HttpSession | None, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task the table owns: cancelled with its session, or at shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if session is not None:
            session.tasks.add(task)

            def finished(done: asyncio.Task[Any]) -> None:
                session.tasks.discard(done)
                self.touch(session)  # idleness counts from the end of the last call

            task.add_done_callback(finished)
        return task

    @contextlib.contextmanager
    def stateless(self, mcp: Session) -> Iterator[None]:
        """Register a 2026-07-28 request for as long as it is being served."""
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        self._stateless.add(mcp)
        try:
            yield
        finally:
            self._stateless.discard(mcp)

    def close(self, session: HttpSession, reason: str) -> None:
        """End a session now: forget it, end its streams, cancel its calls."""
        if session.closed:
            return
        session.closed = True
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        session.outbox.close()
        session.ended.set()
        cancelled = self.dispatcher.cancel_all(session.mcp)
        pending = [task for task in session.tasks if not task.done()]
        if pending:
            asyncio.get_running_loop().call_later(self.cancel_timeout, _cancel_leftovers, pending)
        log.info(
            "session closed",
            extra={
                "session": session.short_id,
                "transport": session.kind.value,
                "reason": reason,
                "calls_cancelled": cancelled,
            },
        )

    def tools_changed(self) -> None:
        """Tell every client that its tool list changed, where it listens (see `McpDispatcher.tools_changed`)."""
        for mcp in self._every_mcp():
            self.dispatcher.tools_changed(mcp)

    def revoke(self, keep: Callable[[Session], bool], reason: str) -> int:
        """Close every session, and cancel every stateless request, whose owner `keep` refuses; returns how many."""
        closed = 0
        for session in list(self._sessions.values()):
            if not keep(session.mcp):
                self.close(session, reason)
                closed += 1
        for mcp in list(self._stateless):
            if not keep(mcp):
                self.dispatcher.end_subscriptions(mcp)
                self.dispatcher.cancel_all(mcp)
                closed += 1
        return closed

    def expire(self) -> int:
        """Close every session idle for `idle_sec`, or unused for `unused_sec`; returns how many."""
        now = self._clock()
        stale = [
            (session, reason)
            for session in list(self._sessions.values())
            if (reason := expiry(session, now, self.lifetimes)) is not None
        ]
        for session, reason in stale:
            self.close(session, reason)
        return len(stale)

    def counts(self) -> dict[str, int]:
        """Open sessions per transport and stateless requests in progress; safe from any thread.

        (`list()` and `len()` each read their container in one step.)
        """
        counts = {SessionKind.SSE.value: 0, SessionKind.HTTP.value: 0, STATELESS: len(self._stateless)}
        for session in list(self._sessions.values()):
            counts[session.kind.value] += 1
        return counts

    def listening(self) -> int:
        """Sessions a notification outside any request reaches now (their own stream is open); any thread."""
        return sum(1 for session in list(self._sessions.values()) if session.has_stream and not session.closed)

    @property
    def in_progress(self) -> int:
        """Requests being served right now (dispatch tasks not yet finished), sessions or not."""
        return len(self._running())

    # --- inside -----------------------------------------------------------------------

    def _every_mcp(self) -> list[Session]:
        return [session.mcp for session in self._sessions.values()] + list(self._stateless)

    def _running(self) -> set[asyncio.Task[Any]]:
        return {task for task in self._tasks if not task.done()}

    async def _reap_forever(self) -> None:
        interval = max(0.05, min(self.lifetimes.idle_sec / 4, self.lifetimes.unused_sec / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire()
            except Exception:  # pragma: no cover - a bug here must not end expiry for good
                log.exception("expiring idle sessions failed")


def _cancel_leftovers(tasks: list[asyncio.Task[Any]]) -> None:
    stuck = [task for task in tasks if not task.done()]
    for task in stuck:
        task.cancel()
    if stuck:
        log.warning("cancelled %d requests that outlived their session", len(stuck))
