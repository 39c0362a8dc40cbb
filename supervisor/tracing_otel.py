"""Call spans on OpenTelemetry: a provider of the runtime's own (never the global one), spans ended exactly once.

Only imported when tracing is on (the `otel` extra). A span is ended on whichever thread answers its
call and gets events from runner threads: the SDK's spans are thread-safe, and the lock here only
keeps a late event (a process reaped after its call was answered) off an ended span. A call started
inside an embedder's own span becomes its child.
"""

from __future__ import annotations

import threading

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from actors.results import CallOutcome
from actors.tool import outcome_label
from supervisor.config import TelemetrySettings
from supervisor.version import VERSION

__all__ = ["OtelCallSpan", "OtelCallTracer", "otlp_tracer"]


class OtelCallSpan:
    def __init__(self, span: Span) -> None:
        self._span = span
        self._lock = threading.Lock()
        self._ended = False

    def admitted(self, scan_id: str) -> None:
        with self._lock:
            if not self._ended:
                self._span.set_attribute("labrecon.scan_id", scan_id)
                self._span.add_event("admitted")

    def spawned(self, pid: int) -> None:
        with self._lock:
            if not self._ended:
                self._span.set_attribute("process.pid", pid)
                self._span.add_event("process spawned", {"process.pid": pid})

    def exited(self) -> None:
        with self._lock:
            if not self._ended:
                self._span.add_event("process exited")

    def end(self, outcome: CallOutcome, *, scan_id: str | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            span = self._span
            if scan_id is not None:
                span.set_attribute("labrecon.scan_id", scan_id)
            span.set_attribute("labrecon.outcome", outcome_label(outcome))
            if outcome.returncode is not None:
                span.set_attribute("process.exit.code", outcome.returncode)
            if outcome.error is not None:
                span.set_attribute("error.type", outcome.error.error_type.value)
                span.set_status(Status(StatusCode.ERROR, outcome.error.message))
            elif not outcome.ok:
                span.set_status(Status(StatusCode.ERROR))
            span.end()


class OtelCallTracer:
    """Call spans from `provider`; `shutdown` shuts the provider down only when this tracer owns it."""

    enabled = True

    def __init__(self, provider: TracerProvider, *, owns_provider: bool = False) -> None:
        self._provider = provider
        self._owns_provider = owns_provider
        self._tracer = provider.get_tracer("labrecon", VERSION)

    def start(self, tool: str, call_id: str, *, owner: str, method: str | None = None) -> OtelCallSpan:
        attributes = {"labrecon.call_id": call_id, "labrecon.tool": tool, "labrecon.owner": owner}
        if method is not None:
            attributes["mcp.method.name"] = method
        span = self._tracer.start_span(
            f"{method} {tool}" if method is not None else f"call {tool}",
            kind=SpanKind.SERVER if method is not None else SpanKind.INTERNAL,
            attributes=attributes,
        )
        return OtelCallSpan(span)

    def shutdown(self) -> None:
        if self._owns_provider:
            self._provider.shutdown()  # the batch processor exports what it holds first


def otlp_tracer(settings: TelemetrySettings) -> OtelCallTracer:
    """Spans batched and exported over OTLP/HTTP (protobuf) to `settings.traces_url`."""
    exporter = OTLPSpanExporter(
        endpoint=settings.traces_url,
        headers={name: value.get_secret_value() for name, value in settings.headers.items()} or None,
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name, "service.version": VERSION}),
        shutdown_on_exit=False,  # the runtime shuts it down when it stops
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelCallTracer(provider, owns_provider=True)
