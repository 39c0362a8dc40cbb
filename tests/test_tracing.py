"""Call traces: one span per tool call from its transport to its answer, carrying the call id; OTLP export.

Spans are read with the SDK's in-memory exporter behind a synchronous processor, so a span is there
as soon as it ends, and it ends before the caller sees the answer. Export over OTLP/HTTP is checked
against a listener the test runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from supervisor.config import ConfigError, TelemetrySettings, load_settings
from supervisor.tracing import NO_TRACER
from supervisor.tracing_otel import OtelCallTracer
from tests.backends import FakeBackend
from tests.helpers import wait_until
from tests.http_support import (
    TIMEOUT,
    fake_pids,
    messages_in,
    open_session,
    request,
    sdk_client,
    serve_process,
    session_headers,
)
from transports.exits import EXIT_CONFIG
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.session import Session

ROOT = Path(__file__).resolve().parent.parent
NMAP = {"target": "10.0.0.5", "ports": "22,80"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracer(provider: TracerProvider) -> OtelCallTracer:
    return OtelCallTracer(provider)


def by_call(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """Every finished call span by the call id it carries, checking no call has two."""
    spans = [span for span in exporter.get_finished_spans() if "labrecon.call_id" in span.attributes]
    found = {span.attributes["labrecon.call_id"]: span for span in spans}
    assert len(found) == len(spans), "a call with more than one span"
    return found


def audit_lines(path: Path, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["event"] == event]


# --- over MCP -------------------------------------------------------------------------------------


def test_each_call_over_streamable_http_is_one_span_with_its_call_id_scan_pid_and_exit_code(
    served, tracer, exporter, tmp_path
):
    audit = tmp_path / "audit.jsonl"
    runtime, daemon = served(tracer=tracer, logging={"audit_path": str(audit)})

    async def two_calls() -> list[Any]:
        async with sdk_client("auto", daemon.url) as client:
            return [await client.call_tool("nmap", NMAP), await client.call_tool("nmap", {"target": "10.0.0.6"})]

    results = asyncio.run(two_calls())
    spans = by_call(exporter)
    answered = {line["call_id"] for line in audit_lines(audit, "call_answered")}
    assert set(spans) == answered == {result.structured_content["call_id"] for result in results}
    pids = fake_pids(runtime)
    for result, pid in zip(results, pids, strict=True):
        assert not result.is_error
        span = spans[result.structured_content["call_id"]]
        assert span.name == "tools/call nmap" and span.kind is SpanKind.SERVER
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes["labrecon.scan_id"] == result.structured_content["scan_id"]
        assert span.attributes["labrecon.tool"] == "nmap"
        assert span.attributes["labrecon.outcome"] == "ok"
        assert span.attributes["process.pid"] == pid
        assert span.attributes["process.exit.code"] == 0
        assert [event.name for event in span.events] == ["admitted", "process spawned", "process exited"]


def test_a_refused_call_is_a_span_with_status_error_and_error_type_validation(served, tracer, exporter):
    runtime, daemon = served(tracer=tracer)

    async def refused() -> Any:
        async with sdk_client("legacy", daemon.url) as client:
            return await client.call_tool("nmap", {"target": "8.8.8.8"})

    result = asyncio.run(refused())
    assert result.is_error
    (span,) = exporter.get_finished_spans()
    assert span.attributes["labrecon.call_id"] == result.structured_content["call_id"]
    assert span.attributes["labrecon.scan_id"] == result.structured_content["scan_id"]
    assert span.attributes["labrecon.outcome"] == span.attributes["error.type"] == "validation"
    assert span.status.status_code is StatusCode.ERROR
    assert "not inside an allowed network" in span.status.description
    assert "process.pid" not in span.attributes and not fake_pids(runtime)


def test_a_task_call_keeps_its_span_open_past_its_answer_until_the_process_exited(served, tracer, exporter, tmp_path):
    gate = tmp_path / "release"
    runtime, daemon = served(
        tracer=tracer, tools={"nmap": {"scenario": {"mode": "block", "release_file": str(gate)}}}
    )
    with httpx.Client(base_url=daemon.url, timeout=TIMEOUT) as client:
        session_id = open_session(client, "")
        message = request("tools/call", {"name": "nmap", "arguments": NMAP, "task": {}}, 7)
        response = client.post("/mcp", json=message, headers=session_headers(session_id))
        replies = [response.json()] if response.headers["content-type"].startswith("application/json") else (
            messages_in(response.text)
        )
        task_id = next(reply for reply in replies if reply.get("id") == 7)["result"]["task"]["taskId"]
        (pid,) = wait_until(lambda: fake_pids(runtime), what="the fake running")
        assert exporter.get_finished_spans() == ()  # answered with the task; the call itself is not
        gate.touch()
        (span,) = wait_until(exporter.get_finished_spans, TIMEOUT, what="the call's span")
    assert span.name == "tools/call nmap"
    assert span.attributes["labrecon.scan_id"] == task_id
    assert span.attributes["labrecon.outcome"] == "ok" and span.attributes["process.pid"] == pid
    assert [event.name for event in span.events] == ["admitted", "process spawned", "process exited"]


class _FailingBackend(FakeBackend):
    async def astart(self, tool: str, arguments: dict[str, Any], **options: Any) -> Any:
        raise RuntimeError("the backend failed before admitting the call")


def test_a_call_that_fails_before_the_runtime_takes_it_is_still_one_ended_span(tracer, exporter):
    dispatcher, session = McpDispatcher(_FailingBackend(), tracer=tracer), Session()

    def ignore(notification: dict[str, Any]) -> None:
        pass

    async def call() -> Any:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        await dispatcher.handle(session, request("initialize", hello, 0), ignore)
        return await dispatcher.handle(session, request("tools/call", {"name": "probe", "arguments": {}}), ignore)

    reply = asyncio.run(call())
    assert reply["result"]["isError"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "tools/call probe" and span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "internal"


# --- the embedding API ------------------------------------------------------------------------------


def test_embedding_api_calls_get_spans_of_their_own_inside_the_embedders_span(
    make_runtime, provider, tracer, exporter
):
    runtime = make_runtime(tracer=tracer)
    outcome = runtime.call("nmap", NMAP)
    with trace.get_tracer("embedder", tracer_provider=provider).start_as_current_span("agent step") as step:
        awaited = asyncio.run(runtime.acall("nmap", NMAP))
    spans = by_call(exporter)
    assert outcome.ok and awaited.ok
    for result in (outcome, awaited):
        span = spans[result.call_id]
        assert span.name == "call nmap" and span.kind is SpanKind.INTERNAL
        assert span.attributes["labrecon.outcome"] == "ok" and span.attributes["process.exit.code"] == 0
        assert "mcp.method.name" not in span.attributes
    assert spans[outcome.call_id].parent is None
    assert spans[awaited.call_id].parent.span_id == step.get_span_context().span_id


def test_a_failed_run_ends_its_span_as_an_error_with_its_exit_code(make_runtime, tracer, exporter):
    runtime = make_runtime(tracer=tracer, tools={"nmap": {"scenario": {"mode": "fail", "exit_code": 3}}})
    outcome = runtime.call("nmap", NMAP)
    span = by_call(exporter)[outcome.call_id]
    assert not outcome.ok and span.status.status_code is StatusCode.ERROR
    assert span.attributes["process.exit.code"] == 3
    assert span.attributes["error.type"] == outcome.error.error_type.value


# --- tracing off ---------------------------------------------------------------------------------------

WITHOUT_OTEL = """
import asyncio, json, sys
from pathlib import Path
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from supervisor.config import ConfigError
from supervisor.runtime import Runtime
from tests.runtimes import fake_config
import transports.cli, transports.http.daemon, transports.stdio
from transports.mcp.dispatcher import McpDispatcher
from transports.mcp.session import Session

config = fake_config(Path(sys.argv[1]))
report = {}
with Runtime.start(config) as runtime:
    report["api"] = runtime.call("nmap", {"target": "10.0.0.5"}).ok
    dispatcher, session = McpDispatcher.for_backend(runtime), Session()

    async def over_mcp():
        def rpc(method, params):
            return dispatcher.handle(session, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, print)
        client = {"name": "t", "version": "1"}
        await rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client})
        return await rpc("tools/call", {"name": "nmap", "arguments": {"target": "10.0.0.5"}})

    report["mcp"] = not asyncio.run(over_mcp())["result"]["isError"]
try:
    Runtime.start({**config, "telemetry": {"otlp_endpoint": "http://127.0.0.1:4318"}})
except ConfigError as exc:
    report["error"] = str(exc)
report["imported"] = sorted(name for name, module in sys.modules.items() if "opentelemetry" in name and module)
print(json.dumps(report))
"""


def test_without_the_extra_calls_work_import_nothing_of_opentelemetry_and_an_endpoint_is_refused(tmp_path):
    ran = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout.splitlines()[-1])
    assert report["api"] and report["mcp"]
    assert report["imported"] == []
    assert "pip install 'labrecon[otel]'" in report["error"]


def test_labrecon_serve_with_an_endpoint_but_without_the_extra_exits_with_the_install_hint(tmp_path):
    config = tmp_path / "labrecon.toml"
    config.write_text('[telemetry]\notlp_endpoint = "http://127.0.0.1:4318"\n')
    blocked = "import sys; sys.modules['opentelemetry'] = None; from transports.cli import main; sys.exit(main())"
    ran = subprocess.run(
        [sys.executable, "-c", blocked, "serve", "--config", str(config), "--transport", "http", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert ran.returncode == EXIT_CONFIG
    assert "telemetry.otlp_endpoint" in ran.stderr and "pip install 'labrecon[otel]'" in ran.stderr


def test_with_no_endpoint_nothing_is_traced(make_runtime):
    runtime = make_runtime()
    assert runtime.tracer is NO_TRACER
    assert runtime.call("nmap", NMAP).ok


# --- settings ---------------------------------------------------------------------------------------


def test_the_endpoint_is_a_base_url_whose_traces_go_to_v1_traces():
    assert TelemetrySettings(otlp_endpoint="https://collector.lab.internal:4318/").traces_url == (
        "https://collector.lab.internal:4318/v1/traces"
    )
    assert TelemetrySettings().traces_url is None


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "grpc://127.0.0.1:4317", "http://", "http://h/?q=1"])
def test_an_endpoint_that_is_not_an_http_url_is_refused_with_its_key(tmp_path, endpoint):
    config = tmp_path / "labrecon.toml"
    config.write_text(f'[telemetry]\notlp_endpoint = "{endpoint}"\n')
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint"):
        load_settings(config)


# --- export over OTLP/HTTP ----------------------------------------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports: every POST's path, headers and (decompressed) body go to `server.received`."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_labrecon_serve_exports_each_calls_span_over_otlp_http(tmp_path, collector):
    secret = "Bearer otlp-collector-secret-0123456789"
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    config = ["[telemetry]", f'otlp_endpoint = "{endpoint}"', 'service_name = "labrecon-lab"',
              f'headers = {{ authorization = "{secret}" }}']
    with serve_process(tmp_path, config=config) as served:

        async def one_call() -> Any:
            async with sdk_client("auto", served.url()) as client:
                return await client.call_tool("nmap", NMAP)

        result = asyncio.run(one_call())
        served.process.send_signal(signal.SIGTERM)  # stopping flushes the batch
        assert served.process.wait(30) == 0, served.log.read_text()
    assert not result.is_error
    (path, headers, body), *_ = collector.received
    assert path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
    assert headers["authorization"] == secret and secret not in served.log.read_text()
    export = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = export.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "labrecon-lab"
    (span,) = [span for scope in resource_spans.scope_spans for span in scope.spans]
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert span.name == "tools/call nmap"
    assert attributes["labrecon.call_id"].string_value == result.structured_content["call_id"]
    assert attributes["process.exit.code"].int_value == 0
