"""Traces of tool calls: one span per call, from its admission to its answer, carrying the call id.

A transport starts a call's span and hands it to the runtime (`handing_over`); the runtime takes it,
or starts one itself for an embedder's call, and ends it when the call is answered - for a run, after
its process exited. A span ends exactly once. With tracing off every span is `NO_SPAN`, and nothing
from opentelemetry is imported (`supervisor.tracing_otel` is the only module that imports it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from actors.results import CallOutcome
from supervisor.config import ConfigError, TelemetrySettings

__all__ = [
    "NO_SPAN",
    "NO_TRACER",
    "CallSpan",
    "CallTracer",
    "Handover",
    "handing_over",
    "take_handed_over",
    "tracer_for",
]

INSTALL_HINT = "pip install 'labrecon[otel]'"


class CallSpan(Protocol):
    """One call's span. Its methods may be called from any thread: the runner's, the answering one's."""

    def admitted(self, scan_id: str) -> None:
        """The call passed validation and has a scan; it goes to its tool."""

    def spawned(self, pid: int) -> None:
        """The call's process exists."""

    def exited(self) -> None:
        """The call's process and its group are gone."""

    def end(self, outcome: CallOutcome, *, scan_id: str | None = None) -> None:
        """The call is answered with `outcome`; the first `end` counts, later ones change nothing."""


class CallTracer(Protocol):
    enabled: bool
    """False: every span is `NO_SPAN`, so a call pays one attribute check for tracing."""

    def start(self, tool: str, call_id: str, *, owner: str, method: str | None = None) -> CallSpan:
        """A span for the call `call_id`; `method` is the MCP method that carried it, None for the embedding API."""

    def shutdown(self) -> None:
        """Export what is buffered and stop; called once every call is answered."""


class _NoSpan:
    def admitted(self, scan_id: str) -> None:
        pass

    def spawned(self, pid: int) -> None:
        pass

    def exited(self) -> None:
        pass

    def end(self, outcome: CallOutcome, *, scan_id: str | None = None) -> None:
        pass


class _NoTracer:
    enabled = False

    def start(self, tool: str, call_id: str, *, owner: str, method: str | None = None) -> CallSpan:
        return NO_SPAN

    def shutdown(self) -> None:
        pass


NO_SPAN: CallSpan = _NoSpan()
NO_TRACER: CallTracer = _NoTracer()


@dataclass
class Handover:
    """A span a transport started, waiting for the runtime to take it with the call it belongs to."""

    span: CallSpan
    call_id: str
    taken: bool = False

    def settle(self, outcome: CallOutcome) -> None:
        """End the span of a call the runtime never took (it ends the ones it took)."""
        if not self.taken:
            self.span.end(outcome)


_HANDOVER: ContextVar[Handover | None] = ContextVar("labrecon_call_span", default=None)


@contextmanager
def handing_over(span: CallSpan, call_id: str) -> Iterator[Handover]:
    """Offer `span` to the runtime for the call `call_id` started inside the block (in this task)."""
    handover = Handover(span, call_id)
    token = _HANDOVER.set(handover)
    try:
        yield handover
    finally:
        _HANDOVER.reset(token)


def take_handed_over(call_id: str) -> CallSpan | None:
    """The span a transport started for `call_id`, now the caller's to end; None if there is none."""
    handover = _HANDOVER.get()
    if handover is None or handover.taken or handover.call_id != call_id:
        return None
    handover.taken = True
    return handover.span


def tracer_for(settings: TelemetrySettings) -> CallTracer:
    """The tracer `[telemetry]` asks for: none, or OTLP/HTTP export; raises `ConfigError` without the extra."""
    if settings.traces_url is None:
        return NO_TRACER
    try:
        from supervisor.tracing_otel import otlp_tracer
    except ImportError as exc:
        raise ConfigError(
            f"telemetry.otlp_endpoint is set, but OpenTelemetry is not installed ({exc.name}): {INSTALL_HINT}"
        ) from None
    return otlp_tracer(settings)
