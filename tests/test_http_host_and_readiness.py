"""DNS rebinding is refused by Host, and readiness details are for callers with the token."""

from __future__ import annotations

import httpx
import pytest

from tests.http_support import INITIALIZE, running_daemon

TOKEN = "host-check-token-9c2f"


def _foreign_host(daemon) -> dict[str, str]:
    # What a browser sends after DNS rebinding: the attacker's name in Host, and no Origin
    # (same-origin GET/HEAD requests carry none, so the Origin check never fires).
    return {"host": f"rebind.attacker.example:{daemon.address.port}"}


@pytest.mark.parametrize("path", ["/status", "/metrics", "/faults"])
def test_a_rebound_host_cannot_read_ops_endpoints(make_runtime, path):
    runtime = make_runtime()
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        assert client.get(path).status_code == 200  # sanity: loopback, no token, real Host
        response = client.get(path, headers=_foreign_host(daemon))
        assert response.status_code in (400, 403, 421), (path, response.status_code, response.text[:200])


def test_a_rebound_host_cannot_open_a_legacy_sse_session(make_runtime):
    runtime = make_runtime()
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        with client.stream("GET", "/sse", headers={**_foreign_host(daemon), "accept": "text/event-stream"}) as r:
            status = r.status_code
        assert status in (400, 403, 421), status


@pytest.mark.parametrize(
    "host",
    ["[::1].evil.com", "localhost:80@evil", "localhost:evil", "localhost:80:80", "localhost:", "::1", "[::1]evil"],
)
def test_a_host_that_only_starts_like_loopback_is_refused(make_runtime, host):
    runtime = make_runtime()
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        port = daemon.address.port
        for loopback in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert client.get("/status", headers={"host": loopback}).status_code == 200, loopback
        refused = client.get("/status", headers={"host": host})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden_host", refused.text
        opened = client.post("/mcp", json=INITIALIZE, headers={"host": host, "accept": "application/json"})
        assert opened.status_code == 403 and "mcp-session-id" not in opened.headers
        assert daemon.mcp.counts()["http"] == 0


def test_verbose_readiness_needs_the_token(make_runtime):
    runtime = make_runtime(auth={"token": TOKEN})
    with running_daemon(runtime) as daemon, httpx.Client(base_url=daemon.url, timeout=10) as client:
        body = client.get("/readyz", params={"verbose": ""}).json()
        # Open probes must say only whether the daemon is up, not scanner versions / failure reasons.
        assert "checks" not in body, body
