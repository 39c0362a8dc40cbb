"""The face the tool runtime shows to transports.

Transports (MCP over stdio or HTTP, the CLI) depend on this protocol rather
than on the runtime class, so the dispatcher can be tested against an
in-memory backend and the runtime can change without touching them.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from actors.results import CallOutcome

# progress(done, total, message); invoked on the caller's event loop.
ProgressSink = Callable[[float, float | None, str | None], None]


class UnknownTool(LookupError):
    """A call named a tool this runtime does not serve."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown tool {name!r}; available: {', '.join(known) or 'none'}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class Caller:
    """Who asks: the owner every scan is bound to, and how the audit log describes the asker.

    `owner` is the identity the server established (a named token over HTTP, the local OS user over
    stdio and token-less loopback HTTP), never a name the client chose for itself. `admin` callers
    may see every owner's scans. `detail` (transport peer, client name) is only for the audit log.
    """

    owner: str
    admin: bool = False
    detail: str = ""

    @classmethod
    def local(cls, detail: str = "") -> Caller:
        """The local OS user: the owner over stdio and token-less loopback HTTP, and for embedders."""
        return cls(owner=local_user(), detail=detail)


@cache
def local_user() -> str:
    """The name of the OS user this process runs as (its uid when the name cannot be found)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class ToolInfo:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartedScan:
    """A call on its way: the scan that records it (None where nothing records scans) and its answer to come."""

    scan_id: str | None
    call_id: str
    outcome: asyncio.Future[CallOutcome]


class ToolBackend(Protocol):
    def list_tools(self) -> list[ToolInfo]: ...

    async def astart(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> StartedScan:
        """Admit (or refuse) a call and return without waiting for it; raises `UnknownTool`."""
        ...

    async def acall(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: Caller | None = None,
    ) -> CallOutcome: ...

    def cancel(self, call_id: str) -> bool: ...
