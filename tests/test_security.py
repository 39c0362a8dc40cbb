"""Who may talk to labrecon: Origin validation, bearer tokens, and refusing to bind beyond loopback bare."""

from __future__ import annotations

import logging
import signal

import pytest
from pydantic import SecretStr
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from supervisor.config import AuthSettings, ConfigError, load_settings
from tests.helpers import needs_private_network
from tests.http_support import serve_process
from tests.ops_support import TOKEN, start_runtime
from transports.cli import main
from transports.http import security
from transports.http.security import (
    MIN_TOKEN_LENGTH,
    HostHeader,
    InsecureBind,
    SecurityMiddleware,
    WeakToken,
    bearer_token,
    credentials,
    host_allowed,
    is_loopback,
    origin_allowed,
    parse_host_header,
    require_token_for,
    token_matches,
    token_problem,
)
from transports.ops.endpoints import build_ops_app

DEFAULT_ORIGINS = ("http://localhost", "http://127.0.0.1")
STRONG_TOKEN = "Vd3q-strong-bind-token-8Kx2"


# --- loopback and binding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1", " 127.0.0.1 "],
)
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0", "::", "", "10.0.0.5", "192.168.1.10", "lab.internal", "localhost.evil.com", "0177.0.0.1", "127.1",
        "fe80::1",
    ],
)
def test_anything_not_provably_loopback_is_exposed(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "scanner.lab.internal"])
def test_binding_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(InsecureBind) as caught:
        require_token_for(host, {"auth.token": None})
    assert "labrecon refuses to start without one" in str(caught.value)
    assert "auth.token" in str(caught.value)
    with pytest.raises(InsecureBind):
        require_token_for(host, {"auth.token": SecretStr("")})


def test_the_refusal_is_a_config_error_so_the_cli_exits_2():
    assert issubclass(InsecureBind, ConfigError)


def test_binding_beyond_loopback_with_a_strong_token_and_loopback_without_are_fine():
    require_token_for("0.0.0.0", {"auth.token": SecretStr(STRONG_TOKEN)})
    require_token_for("10.0.0.5", {"auth.token": STRONG_TOKEN})
    require_token_for("127.0.0.1", {"auth.token": None})
    require_token_for("::1", {"auth.token": None})
    require_token_for("127.0.0.1", {"auth.token": "short"})  # on loopback any token is an extra lock, not the only one


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("x" * (MIN_TOKEN_LENGTH - 1), "shorter than 24 characters"),
        ("changeme", "shorter than 24 characters"),
        ("correct horse battery staple", "contains whitespace"),
        ("a" * 30 + "\t", "contains whitespace"),
        (" " + "a" * 30, "contains whitespace"),
        ("a" * 15 + "\u00a0" + "b" * 15, "contains whitespace"),
    ],
)
def test_a_weak_token_cannot_guard_a_bind_beyond_loopback(token, problem):
    found = token_problem(token)
    assert found is not None and problem in found
    with pytest.raises(WeakToken) as caught:
        require_token_for("0.0.0.0", {"auth.token": SecretStr(token)})
    assert problem in str(caught.value) and "labrecon token" in str(caught.value)
    assert token not in str(caught.value)
    assert isinstance(caught.value, InsecureBind)


def test_tokens_of_24_characters_without_whitespace_are_strong_enough():
    assert token_problem("x" * MIN_TOKEN_LENGTH) is None
    assert token_problem(STRONG_TOKEN) is None


# --- tokens from the command line ------------------------------------------------------------------


def test_labrecon_token_prints_a_fresh_strong_token_each_time(capsys):
    printed = []
    for _ in range(3):
        assert main(["token"]) == 0
        out = capsys.readouterr().out
        assert out.endswith("\n") and out.count("\n") == 1
        printed.append(out.strip())
    assert len(set(printed)) == 3
    for token in printed:
        assert len(token) >= 40 and token_problem(token) is None
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        require_token_for("0.0.0.0", {"auth.token": token})


@pytest.mark.parametrize(
    ("token", "problem"),
    [("short-lab-token", "shorter than 24 characters"), ("lab token with some spaces in it", "whitespace")],
)
def test_serve_beyond_loopback_behind_a_weak_token_exits_2_naming_the_problem(capsys, monkeypatch, token, problem):
    monkeypatch.setattr("transports.logs.configure_logging", lambda *args, **kwargs: None)  # keep pytest's handlers
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", token)
    assert main(["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert problem in err and "refuses to start" in err and "labrecon token" in err
    assert token not in err



@needs_private_network
def test_serve_beyond_loopback_behind_a_token_from_labrecon_token(tmp_path, capsys):
    """All interfaces, but in a namespace whose only interface is loopback: nothing outside can be reached."""
    assert main(["token"]) == 0
    token = capsys.readouterr().out.strip()
    with serve_process(
        tmp_path, "--host", "0.0.0.0", env={"LABRECON_AUTH__TOKEN": token}, wrap=["unshare", "-n"]
    ) as served:
        with served.ops_client(timeout=30) as client:
            assert client.get("/status").status_code == 401
            assert client.get("/status", headers={"authorization": f"Bearer {token}"}).status_code == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.log.read_text()
    assert token not in served.log.read_text()


def test_the_refusal_never_contains_a_token():
    with pytest.raises(InsecureBind) as caught:
        require_token_for("0.0.0.0", {"auth.token": None})
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
    middleware = SecurityMiddleware(
        PlainTextResponse("x"), allowed_origins=DEFAULT_ORIGINS, credentials=credentials(AuthSettings(token=TOKEN))
    )
    assert TOKEN not in repr(middleware) and "tokens=1" in repr(middleware)
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
    ("header", "parsed"),
    [
        ("localhost", HostHeader("localhost", None)),
        ("LOCALHOST:8765", HostHeader("localhost", 8765)),
        ("localhost.:80", HostHeader("localhost.", 80)),
        ("127.0.0.1:8765", HostHeader("127.0.0.1", 8765)),
        ("[::1]", HostHeader("::1", None)),
        ("[::1]:8765", HostHeader("::1", 8765)),
        ("[::FFFF:127.0.0.1]:1", HostHeader("::ffff:127.0.0.1", 1)),
        ("labrecon.lab.internal:65535", HostHeader("labrecon.lab.internal", 65535)),
        ("my_host-1:0", HostHeader("my_host-1", 0)),
        # Everything else is not a Host at all.
        ("[::1].evil.com", None),
        ("[::1]evil", None),
        ("[::1]:80.evil.com", None),
        ("localhost:80@evil", None),
        ("user@localhost", None),
        ("localhost:evil", None),
        ("localhost:80:80", None),
        ("localhost:", None),
        ("localhost:65536", None),
        ("localhost:123456", None),
        ("localhost:-1", None),
        ("localhost:+80", None),
        ("::1", None),
        ("::1:8765", None),
        ("[::1", None),
        ("::1]", None),
        ("[]", None),
        ("[localhost]", None),
        ("[127.0.0.1]", None),
        ("[fe80::1%25lo]:80", None),
        ("[::1%lo]", None),
        ("[:::1]", None),
        ("localhost..", None),
        (".localhost", None),
        ("local host", None),
        (" localhost", None),
        ("localhost ", None),
        ("localhost\t", None),
        ("localhost/", None),
        ("localhost/path", None),
        ("localhost?x", None),
        ("localhost#x", None),
        ("localhost,evil.com", None),
        ("http://localhost", None),
        ("locaLHost\u212a", None),  # KELVIN SIGN lowercases to an ASCII k
        ("l\u00f6calhost", None),
        ("a" * 64 + ".lab", None),
        (".".join(["a" * 63] * 4) + ".b", None),
        ("", None),
        (None, None),
    ],
)
def test_the_host_header_is_a_name_or_ip_literal_with_an_optional_port_and_nothing_else(header, parsed):
    assert parse_host_header(header) == parsed


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("LOCALHOST", True),
        ("localhost.", True),
        ("[::1]:8765", True),
        ("[::ffff:127.0.0.1]:8765", True),
        ("127.9.9.9", True),
        ("labrecon.lab.internal:8765", True),  # listed in allowed_hosts
        ("LABRECON.lab.internal", True),
        ("[2001:db8::5]:8765", True),  # listed in allowed_hosts, with its brackets
        ("rebind.attacker.example:8765", False),
        ("127.0.0.1.attacker.example", False),
        ("127.1", False),
        ("0177.0.0.1", False),
        ("[::1].evil.com", False),
        ("localhost:80@evil", False),
        ("localhost:evil", False),
        ("localhost:80:80", False),
        ("localhost:", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("labrecon.lab.internal:80@evil", False),
        ("", False),
        (None, False),
    ],
)
def test_host_allowed(host, allowed):
    assert host_allowed(host, ("labrecon.lab.internal", "[2001:db8::5]")) is allowed
