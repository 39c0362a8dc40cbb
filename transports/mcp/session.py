"""What one client connection has agreed on, and the tool calls it has in flight.

A `Session` is owned by its transport's event loop and changed only by the dispatcher, one message at a
time. Its era, once decided by the first era-distinctive request, never changes; a request id stays in
`calls` from arrival until its reply is built, so no second request can claim it meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import mcp_types as types

from actors.api import Caller
from transports.mcp import eras, jsonrpc
from transports.mcp.eras import Era

if TYPE_CHECKING:
    from transports.mcp.subscriptions import Subscription

__all__ = ["NotificationSink", "PendingCall", "RequestContext", "Session", "clip", "held", "took_back_own_cancel"]

NotificationSink = Callable[[dict[str, Any]], None]
"""Receives a ready-to-send JSON-RPC notification; must not block (transports enqueue)."""

_MAX_ECHO: Final[int] = 120


def clip(text: str) -> str:
    """Client-supplied text echoed in an error or log, clipped so a huge value is not reflected."""
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."


@dataclass(eq=False)
class PendingCall:
    """A tools/call between arrival and reply."""

    call_id: str
    tool: str
    task: asyncio.Task[Any] | None
    progress_token: types.ProgressToken | None
    scan_id: str | None = None
    runs_as_task: bool = False  # a 2025-11-25 task: its progress goes on after the reply, for the task's life
    last_progress: float | None = None
    finished: bool = False
    cancelled_by_client: bool = False
    task_cancelled: bool = False


@dataclass(eq=False)
class Session:
    """What one client connection has agreed on, and the calls it has in flight.

    `era` is decided by the first era-distinctive request (`initialize` for
    the handshake era, an enveloped request such as `server/discover` for
    2026-07-28). `allowed_eras` lets a transport serve only one era (legacy
    SSE: handshake; stateless HTTP: modern).
    """

    allowed_eras: frozenset[Era] = frozenset(Era)
    era: Era | None = None
    protocol_version: str | None = None
    initialize_answered: bool = False
    initialized: bool = False
    client_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] | None = None
    log_level: str | None = None
    calls: dict[str, PendingCall] = field(default_factory=dict, repr=False)
    peer: str = ""  # set by the transport: "stdio", or the HTTP client's address
    # Set by the transport from what it verified (a named token); None means the local OS user.
    owner: str | None = None
    admin: bool = False
    proof: str | None = field(default=None, repr=False)  # which token opened it (HTTP); see security.Identity
    # Where messages outside any request go (a task's status, its progress): stdout over stdio, the
    # standalone event stream over HTTP while one is open; None while there is nowhere to send them.
    standalone: NotificationSink | None = field(default=None, repr=False)
    # 2026-07-28: the open `subscriptions/listen` streams, by request key; list changes go only there.
    subscriptions: dict[str, Subscription] = field(default_factory=dict, repr=False)

    @classmethod
    def handshake(cls, protocol_version: str) -> Session:
        """A session already past the handshake, for transports where each request stands alone."""
        if protocol_version not in eras.HANDSHAKE_VERSIONS:
            raise ValueError(f"{protocol_version!r} is not a handshake-era protocol version")
        return cls(
            allowed_eras=frozenset({Era.HANDSHAKE}),
            era=Era.HANDSHAKE,
            protocol_version=protocol_version,
            initialize_answered=True,
            initialized=True,
        )

    @classmethod
    def modern(cls) -> Session:
        """A session that accepts only 2026-07-28 enveloped requests."""
        return cls(allowed_eras=frozenset({Era.MODERN}))

    @property
    def in_flight(self) -> int:
        # list() snapshots the dict in one step, so a status reader on another thread is safe.
        return sum(1 for call in list(self.calls.values()) if not call.finished)


def took_back_own_cancel(call: PendingCall) -> bool:
    """After a `CancelledError`: True if it was our own cancel of `call`'s task (now taken back, so the
    request settles through its normal path), False if it came from elsewhere and must propagate."""
    if not call.task_cancelled:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


@contextmanager
def held(session: Session, ctx: RequestContext, name: str) -> Iterator[PendingCall]:
    """A request that may wait (a handle tool, `tasks/*`), held in `session.calls` until its answer is built.

    Its id stays taken meanwhile, and a client's `notifications/cancelled` reaches it (as a
    cancellation of its task, marked `task_cancelled` and `cancelled_by_client`).
    """
    key = jsonrpc.request_key(ctx.request.id)
    call = PendingCall(call_id=uuid.uuid4().hex, tool=name, task=asyncio.current_task(), progress_token=None)
    session.calls[key] = call
    try:
        yield call
    finally:
        call.finished = True
        if session.calls.get(key) is call:
            del session.calls[key]


@dataclass(frozen=True)
class RequestContext:
    """One admitted request: the version it is served at and where its notifications go."""

    request: jsonrpc.Request
    version: str
    era: Era
    log_level: str | None
    notify: NotificationSink
    client_info: dict[str, Any] | None = None  # 2026-07-28: each request names its client
    client_capabilities: dict[str, Any] | None = None  # 2026-07-28: and what it supports

    @property
    def params(self) -> dict[str, Any]:
        return self.request.params or {}

    def caller_in(self, session: Session) -> Caller:
        """Who is asking: the owner the transport established, and (for the audit log) peer and client."""
        info = self.client_info or session.client_info or {}
        client = f"{info.get('name', '?')}/{info.get('version', '?')}" if info else "unknown client"
        detail = f"{session.peer or 'unknown peer'} {client}"
        if session.owner is None:
            return Caller.local(detail)
        return Caller(owner=session.owner, admin=session.admin, detail=detail)
