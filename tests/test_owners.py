"""Owners over HTTP: the bearer token a request carries says who it is, never the client's own name for itself.

Named tokens (`[[auth.tokens]]`) are owners: the audit log names them, a session belongs to the token that
opened it, and only admin tokens reach the ops endpoints.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import mcp_types as types
import pytest

from supervisor.config import ConfigError, load_settings
from tests.helpers import wait_until
from tests.http_support import (
    ACCEPT_BOTH,
    ARGUMENTS,
    INITIALIZE,
    aevents,
    messages_in,
    open_session,
    request,
    sdk_client_with_token,
    session_headers,
)
from tests.ops_support import start_runtime
from transports.cli import main
from transports.http import security
from transports.http.security import Identity, credentials, verify
from transports.http.server import HttpServer
from transports.ops.endpoints import build_ops_app

TOKEN_A = "team-a-secret-0f3c9d2e7b1a"
TOKEN_B = "team-b-secret-8e2d4c6a0b9f"
TOKEN_ADMIN = "admin-secret-5a7c1e3b9d2f"
SECRETS = (TOKEN_A, TOKEN_B, TOKEN_ADMIN)
TOKENS = [
    {"name": "team-a", "token": TOKEN_A},
    {"name": "team-b", "token": TOKEN_B},
    {"name": "ops", "token": TOKEN_ADMIN, "admin": True},
]
UNKNOWN_SESSION = "0" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("LABRECON_"):
            monkeypatch.delenv(key)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def audit_lines(path, count: int) -> list[dict]:
    """The audit log's answered calls once it holds `count` of them (it is written by its own thread)."""

    def answered() -> list[dict]:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [line for line in lines if line["event"] == "call_answered"]

    wait_until(lambda: len(answered()) >= count, 30.0, what="the audit lines")
    return answered()


# --- who a call belongs to -------------------------------------------------------------------------


def test_each_call_is_audited_under_its_tokens_name_not_the_name_the_client_gives_itself(served, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    audit = tmp_path / "audit.jsonl"
    _, daemon = served(auth={"tokens": TOKENS}, logging={"audit_path": str(audit)})
    calls = [("legacy", TOKEN_A, "team-b"), ("auto", TOKEN_B, "team-a"), ("sse", TOKEN_A, "operator")]

    async def scenario() -> None:
        for kind, token, pretends in calls:
            info = types.Implementation(name=pretends, version="1")
            async with sdk_client_with_token(kind, daemon.url, token, info) as client:
                result = await client.call_tool("nmap", ARGUMENTS["nmap"])
                assert not result.is_error, result

    asyncio.run(scenario())
    lines = audit_lines(audit, len(calls))
    assert [line["owner"] for line in lines] == ["team-a", "team-b", "team-a"]
    assert [line["via"].split()[-1].split("/")[0] for line in lines] == ["team-b", "team-a", "operator"]
    text = audit.read_text() + "\n".join(str(record.__dict__) for record in caplog.records)
    assert not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize(
    ("auth", "owner"), [({"token": TOKEN_ADMIN}, "operator"), ({}, getpass.getuser())], ids=["auth.token", "none"]
)
def test_the_single_token_is_the_operator_and_no_token_is_the_local_user(served, tmp_path, auth, owner):
    audit = tmp_path / "audit.jsonl"
    _, daemon = served(auth=auth, logging={"audit_path": str(audit)})
    headers = {**ACCEPT_BOTH, **bearer(TOKEN_ADMIN)}
    with httpx.Client(base_url=daemon.url, headers=headers, timeout=30) as client:
        session_id = open_session(client, "")
        call = request("tools/call", {"name": "nmap", "arguments": ARGUMENTS["nmap"]})
        assert client.post("/mcp", json=call, headers=session_headers(session_id)).status_code == 200
    assert audit_lines(audit, 1)[0]["owner"] == owner


# --- sessions cannot be borrowed -----------------------------------------------------------------------


def test_a_streamable_session_id_is_unknown_to_another_token(served):
    _, daemon = served(auth={"tokens": TOKENS})
    with (
        httpx.Client(base_url=daemon.url, headers=bearer(TOKEN_A), timeout=30) as alice,
        httpx.Client(base_url=daemon.url, headers=bearer(TOKEN_B), timeout=30) as bob,
        httpx.Client(base_url=daemon.url, headers=bearer(TOKEN_ADMIN), timeout=30) as admin,
    ):
        session_id = open_session(alice, "")
        listing = request("tools/list")
        unknown = bob.post("/mcp", json=listing, headers=session_headers(UNKNOWN_SESSION))
        assert unknown.status_code == 404
        for intruder in (bob, admin):
            borrowed = intruder.post("/mcp", json=listing, headers=session_headers(session_id))
            assert (borrowed.status_code, borrowed.json()) == (404, unknown.json())
            assert intruder.get("/mcp", headers=session_headers(session_id)).status_code == 404
            assert intruder.delete("/mcp", headers=session_headers(session_id)).status_code == 404
        # Still the owner's, untouched by the attempts.
        own = alice.post("/mcp", json=listing, headers=session_headers(session_id))
        assert own.status_code == 200 and own.json()["result"]["tools"]


def test_a_legacy_sse_session_id_is_unknown_to_another_token(served):
    _, daemon = served(auth={"tokens": TOKENS})

    async def scenario() -> None:
        async with (
            httpx.AsyncClient(base_url=daemon.url, timeout=30) as client,
            client.stream("GET", "/sse", headers=bearer(TOKEN_A)) as stream,
        ):
            received = aevents(stream)  # kept: dropping it would close the stream, and the session with it
            endpoint = (await anext(received)).data
            unknown = await client.post(
                f"/messages/?session_id={UNKNOWN_SESSION}", json=INITIALIZE, headers=bearer(TOKEN_B)
            )
            borrowed = await client.post(endpoint, json=INITIALIZE, headers=bearer(TOKEN_B))
            assert unknown.status_code == 404
            assert (borrowed.status_code, borrowed.json()) == (404, unknown.json())
            assert (await client.post(endpoint, json=INITIALIZE, headers=bearer(TOKEN_A))).status_code == 202

    asyncio.run(scenario())


# --- ops endpoints ------------------------------------------------------------------------------------


def test_the_ops_endpoints_need_an_admin_token_and_the_probes_none(served):
    runtime, daemon = served(auth={"tokens": TOKENS})
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for method, path in [("GET", "/status"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/faults"),
                             ("POST", "/faults"), ("POST", "/tools/nmap/restart")]:
            refused = client.request(method, path, json={"tool": "nmap", "kind": "fail"}, headers=bearer(TOKEN_A))
            assert refused.status_code == 403, (method, path)
            assert refused.json()["error"] == "forbidden" and "admin" in refused.json()["message"]
        assert runtime.faults() == [] and runtime.status().tools["nmap"].restarts == 0
        assert client.get("/status", headers=bearer(TOKEN_ADMIN)).status_code == 200
        assert client.get("/livez").status_code == 200
        assert "checks" not in client.get("/readyz?verbose", headers=bearer(TOKEN_A)).json()
        assert "checks" in client.get("/readyz?verbose", headers=bearer(TOKEN_ADMIN)).json()


@pytest.fixture
def guarded_ops(tmp_path):
    runtime = start_runtime(tmp_path, auth={"tokens": TOKENS})
    with HttpServer.start(build_ops_app(runtime, runtime.settings), port=0) as server:
        yield server
    runtime.stop(grace=1.0)


def _config_with(tmp_path, port: int, entries: list[dict]) -> str:
    lines = ["[http]", f"port = {port}"]
    for entry in entries:
        lines += ["[[auth.tokens]]", f'name = "{entry["name"]}"', f'token = "{entry["token"]}"']
        lines += ["admin = true"] if entry.get("admin") else []
    path = tmp_path / "client.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_labrecon_status_sends_the_first_admin_named_token_from_the_config(capsys, tmp_path, guarded_ops):
    assert main(["status", "-c", _config_with(tmp_path, guarded_ops.port, TOKENS)]) == 0
    out, err = capsys.readouterr()
    assert "nmap" in out
    assert main(["status", "-c", _config_with(tmp_path, guarded_ops.port, TOKENS[:2])]) == 4
    out, err = capsys.readouterr()
    assert "401" in err and not any(secret in out + err for secret in SECRETS)  # a non-admin token is not sent


# --- configuration ----------------------------------------------------------------------------------


def _toml(auth_token: str | None, entries: list[dict]) -> str:
    lines = ["[auth]", f'token = "{auth_token}"'] if auth_token is not None else []
    for entry in entries:
        lines += ["[[auth.tokens]]"] + [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


BAD_CONFIGS = {
    "duplicate name": (None, [TOKENS[0], {"name": "team-a", "token": TOKEN_B}], "auth.tokens.1.name"),
    "duplicate token": (None, [TOKENS[0], {"name": "team-c", "token": TOKEN_A}], "auth.tokens.1.token"),
    "auth.token again": (TOKEN_A, [TOKENS[0]], "auth.tokens.0.token"),
    "operator again": (TOKEN_ADMIN, [{"name": "operator", "token": TOKEN_A}], "auth.tokens.0.name"),
    "bad name": (None, [{"name": "team a", "token": TOKEN_A}], "auth.tokens.0.name"),
    "long name": (None, [{"name": "x" * 65, "token": TOKEN_A}], "auth.tokens.0.name"),
    "empty token": (None, [{"name": "team-a", "token": ""}], "auth.tokens.0.token"),
    "unknown key": (None, [{"name": "team-a", "token": TOKEN_A, "owner": "x"}], "auth.tokens.0.owner"),
    "the local user": (None, [{"name": getpass.getuser(), "token": TOKEN_A}], "auth.tokens.0.name"),
}


@pytest.mark.parametrize(("auth_token", "entries", "key"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_named_tokens_are_refused_naming_the_key_and_never_the_token(tmp_path, auth_token, entries, key):
    path = tmp_path / "labrecon.toml"
    path.write_text(_toml(auth_token, entries))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert key in str(caught.value)
    assert not any(secret in str(caught.value) for secret in SECRETS)


def test_named_tokens_load_and_stay_out_of_every_repr(tmp_path):
    path = tmp_path / "labrecon.toml"
    path.write_text(_toml(None, TOKENS))
    settings = load_settings(path)
    assert [(entry.name, entry.admin) for entry in settings.auth.tokens] == [
        ("team-a", False), ("team-b", False), ("ops", True),
    ]
    shown = repr(settings) + settings.model_dump_json() + repr(credentials(settings.auth))
    assert not any(secret in shown for secret in SECRETS)


SERVE_REFUSALS = {
    **{name: BAD_CONFIGS[name] for name in ("duplicate name", "duplicate token")},
    "weak named token": (None, [TOKENS[0], {"name": "team-b", "token": "short-b"}], "auth.tokens.1.token"),
}


@pytest.mark.parametrize(("auth_token", "entries", "key"), SERVE_REFUSALS.values(), ids=SERVE_REFUSALS.keys())
def test_serve_beyond_loopback_refuses_bad_named_tokens_with_exit_2(
    tmp_path, capsys, monkeypatch, auth_token, entries, key
):
    monkeypatch.setattr("transports.logs.configure_logging", lambda *args, **kwargs: None)  # keep pytest's handlers
    path = tmp_path / "labrecon.toml"
    path.write_text(_toml(auth_token, entries))
    argv = ["serve", "--config", str(path), "--transport", "http", "--host", "0.0.0.0", "--port", "0"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert key in err
    assert not any(entry["token"] in out + err for entry in entries)


# --- verifying a token -------------------------------------------------------------------------------


def test_a_token_is_compared_with_every_configured_token_even_after_a_match(monkeypatch):
    from supervisor.config import AuthSettings

    configured = credentials(AuthSettings.model_validate({"token": TOKEN_ADMIN, "tokens": TOKENS[:2]}))
    compared = []
    real = security.hmac.compare_digest

    def spy(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert verify(TOKEN_ADMIN, configured) == Identity("operator", admin=True)
    assert verify(TOKEN_B, configured) == Identity("team-b", admin=False)
    assert verify("not-" + TOKEN_A, configured) is None
    assert len(compared) == 3 * len(configured)


# --- scans belong to their owner on the ops endpoints too --------------------------------------------------


def test_a_named_token_sees_only_its_own_scans_and_a_foreign_id_answers_like_an_unknown_one(served):
    _, daemon = served(auth={"tokens": TOKENS})
    call = request("tools/call", {"name": "nmap", "arguments": ARGUMENTS["nmap"]})
    with httpx.Client(base_url=daemon.url, headers={**ACCEPT_BOTH, **bearer(TOKEN_A)}, timeout=30) as mcp:
        session_id = open_session(mcp, "")
        (answer,) = messages_in(mcp.post("/mcp", json=call, headers=session_headers(session_id)).text)
        scan_id = answer["result"]["structuredContent"]["scan_id"]
    with httpx.Client(base_url=daemon.url, timeout=30) as http:

        def scans(token: str) -> list[str]:
            return [scan["scan_id"] for scan in http.get("/scans", headers=bearer(token)).json()["scans"]]

        assert scans(TOKEN_A) == [scan_id] and scans(TOKEN_B) == [] and scans(TOKEN_ADMIN) == [scan_id]
        for path, method in ((f"/scans/{scan_id}", "GET"), (f"/scans/{scan_id}/cancel", "POST")):
            foreign = http.request(method, path, headers=bearer(TOKEN_B))
            unknown = http.request(method, path.replace(scan_id, "f" * 32), headers=bearer(TOKEN_B))
            assert foreign.status_code == unknown.status_code == 404
            assert foreign.json() == json.loads(unknown.text.replace("f" * 32, scan_id))
        assert http.get(f"/scans/{scan_id}", headers=bearer(TOKEN_A)).json()["owner"] == "team-a"
        assert http.get("/scans", params={"owner": "team-a"}, headers=bearer(TOKEN_B)).status_code == 403
        assert http.get("/status", headers=bearer(TOKEN_A)).status_code == 403


def test_over_http_another_tokens_scan_answers_like_an_unknown_one_on_every_mcp_surface(served, tmp_path):
    audit = tmp_path / "audit.jsonl"
    _, daemon = served(auth={"tokens": TOKENS}, logging={"audit_path": str(audit)})
    unknown_id = "f" * 32

    def session(client: httpx.Client) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        session_id = open_session(client, "")

        def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
            reply = client.post("/mcp", json=request(method, params), headers=session_headers(session_id))
            (answer,) = messages_in(reply.text) if reply.headers["content-type"].startswith("text/event-stream") else [
                reply.json()
            ]
            return answer

        return ask

    with (
        httpx.Client(base_url=daemon.url, headers={**ACCEPT_BOTH, **bearer(TOKEN_A)}, timeout=30) as alice_http,
        httpx.Client(base_url=daemon.url, headers={**ACCEPT_BOTH, **bearer(TOKEN_B)}, timeout=30) as bob_http,
    ):
        alice, bob = session(alice_http), session(bob_http)
        ran = alice("tools/call", {"name": "nmap", "arguments": ARGUMENTS["nmap"]})
        scan_id = ran["result"]["structuredContent"]["scan_id"]
        asks = [
            ("tools/call", {"name": "scan_status", "arguments": {"scan_id": "{id}"}}),
            ("tools/call", {"name": "scan_result", "arguments": {"scan_id": "{id}"}}),
            ("tools/call", {"name": "scan_cancel", "arguments": {"scan_id": "{id}"}}),
            ("resources/read", {"uri": "labrecon://scans/{id}"}),
            ("resources/read", {"uri": "labrecon://scans/{id}/raw"}),
            ("tasks/get", {"taskId": "{id}"}),
            ("tasks/result", {"taskId": "{id}"}),
            ("tasks/cancel", {"taskId": "{id}"}),
        ]
        for method, params in asks:
            text = json.dumps(params)
            foreign = bob(method, json.loads(text.replace("{id}", scan_id)))
            unknown = bob(method, json.loads(text.replace("{id}", unknown_id)))
            answer = json.dumps(foreign).replace(scan_id, unknown_id)
            assert json.loads(answer) == unknown or _same_but_call_ids(json.loads(answer), unknown), method
            assert "error" in foreign or foreign["result"].get("isError"), method
            mine = alice(method, json.loads(text.replace("{id}", scan_id)))
            assert "error" not in mine or method == "tasks/cancel", (method, mine)  # a finished task: -32602
        assert bob("tools/call", {"name": "scans_list", "arguments": {}})["result"]["structuredContent"]["scans"] == []
        assert bob("tasks/list", {})["result"]["tasks"] == []
        assert [r["uri"] for r in bob("resources/list", {})["result"]["resources"]] == ["labrecon://scope"]
    owners = {line["owner"] for line in audit_lines(audit, 1)}
    assert owners == {"team-a"}  # the scan is team-a's, whatever the client called itself


def _same_but_call_ids(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two handle-tool error answers alike but for the correlation id each call gets."""
    def masked(answer: dict[str, Any]) -> str:
        text = json.dumps(answer)
        envelope = json.loads(answer["result"]["content"][1]["text"])
        return text.replace(envelope["call_id"], "<call>")

    return "result" in one and "result" in other and masked(one) == masked(other)
