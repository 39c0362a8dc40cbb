"""Which HTTP sessions go, and which one makes room: pure decisions over the session table's data.

A session with a call in flight, or a reply its client may still come back for, never expires; any
other goes after `idle_sec` without a message, or after `unused_sec` when nothing but its handshake
used it and it holds no event stream. A full table evicts a session *held* by none of these, nor by
an open stream: never used first, then the least recently active. Sessions count against their
client's address, loopback excepted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "HANDSHAKE_METHODS",
    "Lifetimes",
    "SessionState",
    "awaits_resume",
    "client_key",
    "counts_as_use",
    "eviction_victim",
    "expiry",
    "held",
    "sessions_of",
]

HANDSHAKE_METHODS = frozenset({"initialize", "notifications/initialized"})
"""Messages that open a session without using it: a client that sends only these may have vanished."""

IPV6_CLIENT_PREFIX = 64
"""IPv6 clients are counted by network: one host usually holds a whole /64 and can pick any address in it."""


class SessionState(Protocol):
    """What these decisions read of a session."""

    @property
    def last_active(self) -> float: ...

    @property
    def used(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    @property
    def has_stream(self) -> bool: ...

    @property
    def client(self) -> str | None: ...

    @property
    def resume_deadline(self) -> float | None:
        """Until when its client may come back for events not yet delivered; None when none await it."""


S = TypeVar("S", bound=SessionState)


@dataclass(frozen=True)
class Lifetimes:
    idle_sec: float
    unused_sec: float


def counts_as_use(message: Any) -> bool:
    """Does this message use its session? Anything but the handshake does (a batch too)."""
    return not (isinstance(message, dict) and message.get("method") in HANDSHAKE_METHODS)


def awaits_resume(session: SessionState, now: float) -> bool:
    """Does `session` keep events undelivered that its client may still come back for at `now`?"""
    deadline = session.resume_deadline
    return deadline is not None and now < deadline


def held(session: SessionState, now: float) -> bool:
    """Would closing `session` at `now` lose something: a call in flight, an open stream, an undelivered reply?"""
    return session.busy or session.has_stream or awaits_resume(session, now)


def expiry(session: SessionState, now: float, lifetimes: Lifetimes) -> str | None:
    """Why `session` must be closed at `now`, or None while it may stay."""
    if session.busy or awaits_resume(session, now):
        return None
    quiet = now - session.last_active
    if quiet >= lifetimes.idle_sec:
        return f"idle for {lifetimes.idle_sec:g}s"
    if not session.used and not session.has_stream and quiet >= lifetimes.unused_sec:
        return f"unused for {lifetimes.unused_sec:g}s after initialize"
    return None


def eviction_victim(sessions: Iterable[S], now: float) -> S | None:
    """The session to close at `now` so a new one fits, or None when every session is held."""
    return min(
        (session for session in sessions if not held(session, now)),
        key=lambda session: (session.used, session.last_active),
        default=None,
    )


def client_key(address: str | None) -> str | None:
    """Whose sessions a client's address counts against; None for loopback and unknown clients (no cap).

    Every local agent connects from 127.0.0.1, and whoever reaches loopback
    already runs on this machine, so capping that one address would only
    stop several agents on one host from sharing the daemon.
    """
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def sessions_of(sessions: Iterable[SessionState], key: str) -> int:
    """How many of `sessions` count against the client `key`."""
    return sum(1 for session in sessions if session.client == key)
