"""Who may talk to labrecon: Origin validation, bearer tokens, and refusing to bind beyond loopback bare."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from ops_support import TOKEN, start_runtime
from supervisor.config import ConfigError, load_settings
from transports import security
from transports.ops import build_ops_app
from transports.security import (
    InsecureBind,
    SecurityMiddleware,
    bearer_token,
    is_loopback,
    origin_allowed,
    require_token_for,
    token_matches,
)

DEFAULT_ORIGINS = ("http://localhost", "http://127.0.0.1")


# --- loopback and binding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1", " 127.0.0.1 "],
)
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.10", "lab.internal", "localhost.evil.com", "0177.0.0.1", "127.1", "fe80::1"],
)
def test_anything_not_provably_loopback_is_exposed(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "scanner.lab.internal"])
def test_binding_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(InsecureBind) as caught:
        require_token_for(host, None)
    assert "labrecon refuses to start without one" in str(caught.value)
    assert "auth.token" in str(caught.value)
    with pytest.raises(InsecureBind):
        require_token_for(host, SecretStr(""))


def test_the_refusal_is_a_config_error_so_the_cli_exits_2():
    assert issubclass(InsecureBind, ConfigError)


def test_binding_beyond_loopback_with_a_token_and_loopback_without_are_fine():
    require_token_for("0.0.0.0", SecretStr(TOKEN))
    require_token_for("10.0.0.5", TOKEN)
    require_token_for("127.0.0.1", None)
    require_token_for("::1", None)


def test_the_refusal_never_contains_a_token():
    with pytest.raises(InsecureBind) as caught:
        require_token_for("0.0.0.0", None)
    assert TOKEN not in str(caught.value)


# --- origins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://localhost", "http://localhost:5173", "http://127.0.0.1:8080", "http://LOCALHOST:3000", "http://localhost/"],
)
def test_loopback_origins_are_allowed_on_any_port(origin):
    assert origin_allowed(origin, DEFAULT_ORIGINS)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "https://localhost",  # scheme must match
        "http://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://[::1]:8080",  # not in the list
        "file://localhost",
        "http://localhost:notaport",
        "http://user@localhost",
        "http://localhost/path",
    ],
)
def test_other_origins_are_refused(origin):
    assert not origin_allowed(origin, DEFAULT_ORIGINS)


def test_a_configured_remote_origin_matches_its_own_port_only():
    allowed = ("https://console.lab.internal:8443", "http://dash.lab.internal")
    assert origin_allowed("https://console.lab.internal:8443", allowed)
    assert not origin_allowed("https://console.lab.internal", allowed)
    assert not origin_allowed("https://console.lab.internal:9443", allowed)
    assert origin_allowed("http://dash.lab.internal", allowed)
    assert origin_allowed("http://dash.lab.internal:80", allowed)
    assert not origin_allowed("http://dash.lab.internal:8080", allowed)


def test_a_loopback_origin_with_a_port_pins_that_port():
    assert origin_allowed("http://localhost:3000", ("http://localhost:3000",))
    assert not origin_allowed("http://localhost:3001", ("http://localhost:3000",))


# --- tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer {TOKEN}", TOKEN),
        (f"  Bearer   {TOKEN}  ", TOKEN),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header, token):
    assert bearer_token(header) == token


def test_tokens_are_compared_in_constant_time(monkeypatch):
    seen = []
    real = security.hmac.compare_digest

    def spy(a, b):
        seen.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert token_matches(TOKEN, TOKEN.encode())
    assert not token_matches(TOKEN + "x", TOKEN.encode())
    assert not token_matches("ünïcode", TOKEN.encode())
    assert not token_matches(None, TOKEN.encode())
    assert seen == [(bytes, bytes)] * 3


# --- the middleware, on the ops app ---------------------------------------------------------------


@pytest.fixture
def runtime(make_runtime):
    return make_runtime(auth={"token": TOKEN})


@pytest.fixture
def client(runtime):
    with TestClient(build_ops_app(runtime, runtime.settings)) as c:
        yield c


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/livez", "/status", "/metrics"])
def test_a_foreign_origin_is_403_everywhere(client, path):
    response = client.get(path, headers={"Origin": "http://evil.example", **auth()})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_origin"


def test_an_allowed_origin_and_no_origin_pass(client):
    assert client.get("/status", headers={"Origin": "http://localhost:6274", **auth()}).status_code == 200
    assert client.get("/status", headers=auth()).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/faults"),
        ("POST", "/faults"),
        ("DELETE", "/faults"),
        ("POST", "/tools/nmap/restart"),
        ("POST", "/tools/nmap/breaker"),
        ("GET", "/nowhere"),
    ],
)
def test_everything_but_the_probes_needs_the_token(client, runtime, method, path):
    response = client.request(method, path, json={"tool": "nmap", "kind": "crash"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="labrecon"'
    assert response.json() == {"error": "unauthorized", "message": "a bearer token is required"}
    assert runtime.faults() == []  # nothing happened behind the refusal
    assert runtime.status().tools["nmap"].restarts == 0


def test_a_wrong_token_is_401_invalid_token_and_echoes_nothing(client):
    wrong = "not-the-" + TOKEN
    response = client.get("/status", headers=auth(wrong))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="labrecon", error="invalid_token"'
    assert wrong not in response.text and TOKEN not in response.text
    assert TOKEN not in str(response.headers)


def test_other_auth_schemes_are_401(client):
    response = client.get("/status", headers={"Authorization": "Basic " + TOKEN})
    assert response.status_code == 401


def test_probes_stay_open_without_a_token(client):
    assert client.get("/livez").json() == {"live": True}
    assert client.get("/readyz").status_code == 200
    assert client.get("/readyz/").status_code in (200, 307)  # still the probe, never 401


def test_the_right_token_opens_everything(client):
    assert client.get("/status", headers=auth()).status_code == 200
    assert client.get("/metrics", headers=auth()).status_code == 200
    created = client.post("/faults", json={"tool": "nmap", "kind": "fail"}, headers=auth())
    assert created.status_code == 201


def test_the_token_appears_in_no_status_body_or_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = [
        client.get("/status", headers=auth()).text,
        client.get("/metrics", headers=auth()).text,
        client.get("/readyz?verbose").text,
        client.post("/tools/nmap/restart", headers=auth()).text,
        client.get("/status", headers=auth("wrong")).text,
        client.post("/faults", json={"tool": "nmap", "kind": "??"}, headers=auth()).text,
    ]
    assert all(TOKEN not in body for body in bodies)
    assert all(TOKEN not in record.getMessage() and TOKEN not in str(record.__dict__) for record in caplog.records)


def test_the_middleware_and_settings_keep_the_token_out_of_their_repr(monkeypatch):
    middleware = SecurityMiddleware(lambda *a: None, allowed_origins=DEFAULT_ORIGINS, token=SecretStr(TOKEN))
    assert TOKEN not in repr(middleware) and "token=set" in repr(middleware)
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", TOKEN)
    settings = load_settings()
    assert TOKEN not in repr(settings) and TOKEN not in settings.model_dump_json()


def test_without_a_token_configured_only_the_origin_is_checked(tmp_path):
    rt = start_runtime(tmp_path)
    try:
        with TestClient(build_ops_app(rt, rt.settings)) as client:
            assert client.get("/status").status_code == 200
            assert client.get("/status", headers={"Origin": "http://evil.example"}).status_code == 403
    finally:
        rt.stop(grace=1.0)


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("LOCALHOST", True),
        ("[::1]:8765", True),
        ("127.9.9.9", True),
        ("labrecon.lab.internal:8765", True),  # listed in allowed_hosts
        ("rebind.attacker.example:8765", False),
        ("127.0.0.1.attacker.example", False),
        ("", False),
        (None, False),
    ],
)
def test_host_allowed(host, allowed):
    from transports.security import host_allowed

    assert host_allowed(host, ("labrecon.lab.internal",)) is allowed
