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
    ) -> CallOutcome: ...

    def cancel(self, call_id: str) -> bool: ...
