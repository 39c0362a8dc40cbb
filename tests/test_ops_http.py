"""The ops endpoints against a real runtime on fake scanners: probes, metrics, status, faults, control."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.testclient import TestClient

from supervisor.config import Settings
from supervisor.status import Status
from tests.helpers import wait_until
from tests.ops_support import BlockingRuntime, start_runtime
from transports.ops.endpoints import METRICS_CONTENT_TYPE, build_ops_app, ops_routes


@pytest.fixture
def runtime(make_runtime):
    return make_runtime()


@pytest.fixture
def client(runtime):
    with TestClient(build_ops_app(runtime, runtime.settings)) as c:
        yield c


def crash_until_failed(tmp_path, on_intensity_exceeded="fail"):
    """A runtime whose only tool (nmap) gives up after its first crash."""
    rt = start_runtime(
        tmp_path,
        tools={"nmap": {"retry": {"attempts": 0}}, "masscan": {"enabled": False}, "gobuster": {"enabled": False}},
        supervisor={"max_restarts": 0, "on_intensity_exceeded": on_intensity_exceeded},
    )
    rt.inject(tool="nmap", kind="crash", count=1)
    outcome = rt.call("nmap", {"target": "10.0.0.5", "ports": "22"}, timeout=30)
    assert outcome.error is not None and outcome.error.error_type == "actor_restarted"
    return rt


# --- probes ----------------------------------------------------------------------------------


def test_livez_answers_live(client):
    response = client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"live": True}


def test_readyz_is_ready_and_verbose_lists_every_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["ready"] is True and set(response.json()) == {"ready", "status"}
    verbose = client.get("/readyz?verbose").json()
    names = [check["name"] for check in verbose["checks"]]
    assert {"system", "process", "tools", "actor:nmap", "breaker:masscan", "binary:gobuster"} <= set(names)
    assert all(set(check) == {"name", "ok", "critical", "detail"} for check in verbose["checks"])


def test_healthz_sums_up_health_with_every_check(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("healthy", "degraded") and body["live"] is True and body["ready"] is True
    names = {check["name"] for check in body["checks"]}
    assert {"system", "process", "tools", "actor:nmap", "breaker:masscan", "binary:gobuster"} <= names


def test_healthz_is_503_while_unhealthy(tmp_path):
    rt = crash_until_failed(tmp_path)
    try:
        with TestClient(build_ops_app(rt, rt.settings)) as client:
            wait_until(lambda: rt.status().tools["nmap"].state == "failed", what="nmap marked failed")
            response = client.get("/healthz")
            assert response.status_code == 503 and response.json()["status"] == "unhealthy"
            failing = [check["name"] for check in response.json()["checks"] if not check["ok"]]
            assert "tools" in failing
    finally:
        rt.stop(grace=2.0)


def test_readyz_turns_503_when_no_tool_serves_and_reset_brings_it_back(tmp_path):
    rt = crash_until_failed(tmp_path)
    try:
        with TestClient(build_ops_app(rt, rt.settings)) as client:
            wait_until(lambda: rt.status().tools["nmap"].state == "failed", what="nmap marked failed")
            response = client.get("/readyz", params={"verbose": "1"})
            assert response.status_code == 503
            body = response.json()
            assert body["ready"] is False and body["status"] == "unhealthy"
            tools_check = next(c for c in body["checks"] if c["name"] == "tools")
            assert tools_check == {"name": "tools", "ok": False, "critical": True, "detail": "no tool is serving"}

            reset = client.post("/tools/nmap/reset")
            assert reset.status_code == 200
            assert reset.json() == {"tool": "nmap", "action": "reset", "message": "nmap reset and serving again"}
            assert client.get("/readyz").status_code == 200
    finally:
        rt.stop(grace=1.0)


def test_livez_turns_503_once_the_runtime_escalates(tmp_path):
    rt = crash_until_failed(tmp_path, on_intensity_exceeded="escalate")
    try:
        with TestClient(build_ops_app(rt, rt.settings)) as client:
            wait_until(rt.escalated.is_set, what="escalation")
            response = client.get("/livez")
            assert response.status_code == 503
            assert response.json()["live"] is False
            assert "nmap" in response.json()["reason"]
    finally:
        rt.stop(grace=1.0)


def test_a_stopped_runtime_is_unavailable_not_an_exception(runtime, client):
    runtime.stop(grace=1.0)
    status = client.get("/status")
    assert status.status_code == 503
    assert status.json()["error"] == "unavailable"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False


# --- metrics and status ------------------------------------------------------------------------


def test_metrics_are_prometheus_text(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == METRICS_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert 'labrecon_tool_calls_total{outcome="ok",pool="local",tool="nmap"} 0.0' in response.text
    assert "# TYPE labrecon_tool_in_flight gauge" in response.text


def test_status_is_the_status_model(client, runtime):
    runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}, timeout=30)
    response = client.get("/status")
    assert response.status_code == 200
    status = Status.model_validate(response.json())
    assert list(status.tools) == ["nmap", "masscan", "gobuster"]
    assert status.tools["nmap"].calls.get("ok") == 1
    assert status.tools["nmap"].p50_sec is not None
    assert status.runtime.config_digest == runtime.settings.digest()


# --- faults ------------------------------------------------------------------------------------


def test_inject_list_and_clear_a_fault(client, runtime):
    created = client.post("/faults", json={"tool": "nmap", "kind": "crash", "count": 2})
    assert created.status_code == 201
    rule_id = created.json()["id"]
    assert created.json()["fault"]["kind"] == "crash" and created.json()["fault"]["count"] == 2

    listed = client.get("/faults").json()["faults"]
    assert [(r["id"], r["tool"], r["kind"], r["fired"]) for r in listed] == [(rule_id, "nmap", "crash", 0)]
    assert runtime.faults() == listed

    cleared = client.delete(f"/faults/{rule_id}")
    assert cleared.status_code == 200 and cleared.json() == {"cleared": 1}
    again = client.delete(f"/faults/{rule_id}")
    assert again.status_code == 404
    assert again.json()["message"] == f"no fault rule with id {rule_id}"
    assert client.get("/faults").json() == {"faults": []}


def test_clear_all_or_one_tools_faults(client):
    for tool in ("nmap", "nmap", "masscan"):
        assert client.post("/faults", json={"tool": tool, "kind": "fail"}).status_code == 201
    assert client.delete("/faults", params={"tool": "nmap"}).json() == {"cleared": 2}
    assert [r["tool"] for r in client.get("/faults").json()["faults"]] == ["masscan"]
    assert client.delete("/faults").json() == {"cleared": 1}


def test_an_injected_fault_reaches_the_next_call(client, runtime):
    client.post("/faults", json={"tool": "nmap", "kind": "fail", "count": 1})
    outcome = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}, timeout=30)
    assert not outcome.ok
    assert client.get("/faults").json()["faults"][0]["fired"] == 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"tool": "nmap", "kind": "crash", "count": 1, "every": 2}, 400, "give only one of count, every"),
        ({"tool": "nmap", "kind": "explode"}, 400, "kind"),
        ({"tool": "nmap", "kind": "crash", "count": 0}, 400, "count"),
        ({"tool": "nmap", "kind": "crash", "seed": 3}, 400, "seed goes with probability"),
        ({"tool": "nmap", "kind": "crash", "colour": "red"}, 400, "colour"),
        ({"kind": "crash"}, 400, "tool"),
        ({"tool": "hydra", "kind": "crash"}, 404, "unknown tool 'hydra'"),
    ],
)
def test_bad_fault_bodies_are_refused_with_a_clear_message(client, body, status, fragment):
    response = client.post("/faults", json=body)
    assert response.status_code == status
    assert fragment in response.json()["message"]
    assert client.get("/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "must be a JSON object"), (b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object")],
)
def test_a_body_that_is_not_a_json_object_is_400(client, content, fragment):
    response = client.post("/faults", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid", "message": response.json()["message"]}
    assert fragment in response.json()["message"]


def test_an_oversized_body_is_413(client):
    response = client.post("/faults", content=b"{" + b" " * (70 << 10) + b"}")
    assert response.status_code == 413


# --- tool control ------------------------------------------------------------------------------


def test_restart_a_tool(client, runtime):
    response = client.post("/tools/nmap/restart")
    assert response.status_code == 200
    assert response.json()["message"] == "nmap restarting (incarnation 1 is being replaced)"
    status = wait_until(
        lambda: (s := runtime.status().tools["nmap"]).incarnation == 2 and s.state == "running" and s, what="nmap back"
    )
    assert status.restarts == 1 and status.last_restart_reason == "operator: restart requested"


def test_force_the_breaker_open_and_closed(client, runtime):
    opened = client.post("/tools/masscan/breaker", json={"state": "open"})
    assert opened.status_code == 200 and opened.json()["message"] == "masscan breaker forced open"
    wait_until(lambda: runtime.status().tools["masscan"].breaker.state == "open", what="breaker open")
    closed = client.post("/tools/masscan/breaker", json={"state": "closed"})
    assert closed.status_code == 200
    wait_until(lambda: runtime.status().tools["masscan"].breaker.state == "closed", what="breaker closed")


@pytest.mark.parametrize("body", [{"state": "ajar"}, {}, {"state": 1}])
def test_a_bad_breaker_state_is_400(client, body):
    response = client.post("/tools/nmap/breaker", json=body)
    assert response.status_code == 400
    assert response.json()["field"] == "state"


@pytest.mark.parametrize("action", ["reset", "restart"])
def test_unknown_tools_are_404_with_the_known_ones(client, action):
    response = client.post(f"/tools/hydra/{action}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["known"] == ["gobuster", "masscan", "nmap"]
    assert client.post("/tools/hydra/breaker", json={"state": "open"}).status_code == 404


def test_reset_of_a_running_tool_says_there_is_nothing_to_do(client):
    response = client.post("/tools/nmap/reset")
    assert response.status_code == 200
    assert response.json()["message"] == "nmap is running, not failed; nothing to reset"


def test_wrong_method_and_unknown_path_answer_json(client):
    wrong = client.get("/tools/nmap/reset")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


# --- the event loop ------------------------------------------------------------------------------


def test_a_slow_runtime_never_blocks_the_event_loop():
    """While /metrics waits on the runtime in a worker thread, /livez still answers on the loop."""
    runtime = BlockingRuntime()
    app = build_ops_app(runtime, Settings())  # type: ignore[arg-type]

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            slow = asyncio.create_task(client.get("/metrics"))
            assert await asyncio.to_thread(runtime.entered.wait, 10.0), "the request never reached the runtime"
            live = await asyncio.wait_for(client.get("/livez"), timeout=5)
            assert live.status_code == 200
            assert not slow.done()
            runtime.release.set()
            response = await asyncio.wait_for(slow, timeout=5)
            assert response.text == "labrecon_up 1\n"

    asyncio.run(scenario())


def test_ops_routes_mount_on_another_app(runtime):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def mcp(request):
        return PlainTextResponse("mcp")

    app = Starlette(routes=[Route("/mcp", mcp, methods=["POST"]), *ops_routes(runtime)])
    with TestClient(app) as client:
        assert client.post("/mcp").text == "mcp"
        assert client.get("/livez").json() == {"live": True}
        assert client.get("/status").status_code == 200
