"""The face the tool runtime shows to transports.

Transports (MCP over stdio or HTTP, the CLI) depend on this protocol rather
than on the runtime class, so the dispatcher can be tested against an
in-memory backend and the runtime can change without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.results import CallOutcome

# progress(done, total, message); invoked on the caller's event loop.
ProgressSink = Callable[[float, float | None, str | None], None]

# on_outcome(outcome): invoked on whichever thread answers the call, before
# the awaiting task is woken; it must not block. Lets a transport that can
# write from any thread send the reply without a hop back to its loop. A
# backend may also never call it (a call refused before it ran, say): the
# awaiting task gets the outcome either way.
OutcomeSink = Callable[[CallOutcome], None]


class UnknownTool(LookupError):
    """A call named a tool this runtime does not serve."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown tool {name!r}; available: {', '.join(known) or 'none'}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class ToolInfo:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    annotations: dict[str, Any] = field(default_factory=dict)


class ToolBackend(Protocol):
    def list_tools(self) -> list[ToolInfo]: ...

    async def acall(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str | None = None,
        progress: ProgressSink | None = None,
        caller: str | None = None,  # who asks, for the audit log: transport and client
        on_outcome: OutcomeSink | None = None,
    ) -> CallOutcome: ...

    def cancel(self, call_id: str) -> bool: ...
