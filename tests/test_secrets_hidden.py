"""No token is ever shown: not in a log line, a status page, an answer, an audit line or an error message.

A real daemon (HTTP on 127.0.0.1, fake scanners) holds two distinctive tokens, an `[auth] token` and a
named `[[auth.tokens]]` one; the test drives every surface it has, a failing call and a wrong token
included, keeps everything that came out, and looks for the tokens (and pieces of them) in all of it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import needs_private_network
from tests.http_support import events, open_session, request, serve_process, session_headers, write_fake_config
from transports.cli import main

OPERATOR_TOKEN = "opTok-7QmZ2vRx9LwK4nBc8HdJ3sFy"
ALICE_TOKEN = "alTok-5GtP1uYe6XaN0rMq2WkV9bCz"
WRONG_TOKEN = "wrTok-3JdS8fLh4QcU7oIe1TzR6mXn"
"""A token nobody configured: what a caller sends must not be echoed back either."""

ROTATED_TOKEN = "rtTok-8KqW2eLs5VnB1xZc4YhG7jDm"
"""What `auth.token` becomes after a reload."""
BOB_TOKEN = "bbTok-6RfT9yUi2OpA5sDq8WeX1cVn"
"""A named token a reload removes."""

SECRETS = (OPERATOR_TOKEN, ALICE_TOKEN, WRONG_TOKEN, ROTATED_TOKEN, BOB_TOKEN)
ROOT = Path(__file__).resolve().parent.parent


def leaks(text: str) -> list[str]:
    """The tokens, or any 12 characters in a row of one, that `text` contains."""
    pieces = {token[i : i + 12] for token in SECRETS for i in range(len(token) - 11)}
    return sorted(piece for piece in pieces if piece in text)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.lower().startswith("labrecon_"):
            monkeypatch.delenv(key)


class Capture:
    """Everything a surface said, kept to be searched at the end."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text

    def response(self, where: str, response: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        self.add(where, f"{response.status_code}\n{headers}\n\n{response.text}")
        return response

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        self.add(f"labrecon {' '.join(argv)} (stdout)", captured.out)
        self.add(f"labrecon {' '.join(argv)} (stderr)", captured.err)
        return code, captured.out

    def assert_clean(self) -> None:
        found = {where: leaks(text) for where, text in self.texts if leaks(text)}
        assert not found, f"tokens shown: {found}"


def test_no_token_appears_in_anything_a_serving_daemon_says(tmp_path, capsys, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    config = [
        "[logging]",
        'level = "debug"',
        f'audit_path = "{audit}"',
        "[[faults]]",
        'tool = "masscan"',
        'kind = "fail"',
        "[[auth.tokens]]",
        'name = "alice"',
        f'token = "{ALICE_TOKEN}"',
    ]
    seen = Capture()
    with serve_process(tmp_path, config=config, env={"LABRECON_AUTH__TOKEN": OPERATOR_TOKEN}) as served:
        url = served.url()
        operator, alice = ({"authorization": f"Bearer {token}"} for token in (OPERATOR_TOKEN, ALICE_TOKEN))
        wrong = {"authorization": f"Bearer {WRONG_TOKEN}"}
        with httpx.Client(base_url=url, timeout=60) as http:
            for path in ("/livez", "/readyz", "/readyz?verbose", "/healthz", "/metrics", "/status", "/faults"):
                assert seen.response(f"{path} as operator", http.get(path, headers=operator)).status_code == 200
                seen.response(f"{path} as alice", http.get(path, headers=alice))
                seen.response(f"{path} without a token", http.get(path))
                refused = seen.response(f"{path} with a wrong token", http.get(path, headers=wrong))
                assert refused.status_code == 401 or path.startswith(("/livez", "/readyz"))
            for path in ("/mcp", "/sse", "/messages?session_id=x"):
                refused = seen.response(f"POST {path} with a wrong token", http.post(path, headers=wrong, json={}))
                assert refused.status_code == 401

        with httpx.Client(timeout=60, headers=alice) as http:
            session = open_session(http, url)
            headers = session_headers(session)
            calls = [
                ("nmap", {"target": "10.0.0.5", "ports": "22,80"}),  # runs
                ("masscan", {"target": "10.0.0.0/30", "ports": "80"}),  # fails: the injected fault
                ("gobuster", {"target": "web.lab.internal"}),  # refused: no DNS, no static host
                ("nmap", {"target": "8.8.8.8"}),  # refused: outside the allowed networks
                ("scans_list", {}),
            ]
            for number, (name, arguments) in enumerate(calls, start=1):
                body = request("tools/call", {"name": name, "arguments": arguments}, number)
                answer = seen.response(f"tools/call {name}", http.post(url + "/mcp", json=body, headers=headers))
                assert answer.status_code == 200 and f'"id":{number}' in answer.text.replace(" ", "")
            assert '"isError":true' in seen.texts[-4][1].replace(" ", "")  # the failed masscan
            seen.response("tools/list", http.post(url + "/mcp", json=request("tools/list", {}, 9), headers=headers))
            stolen = http.post(url + "/mcp", json={}, headers={**headers, **wrong})
            assert seen.response("alice's session with the wrong token", stolen).status_code == 401
            seen.response("/scans as alice", http.get(url + "/scans"))

        seen.add("a request the parser refuses", raw_request(url, f"Authorization Bearer {WRONG_TOKEN}"))

        monkeypatch.setenv("LABRECON_AUTH__TOKEN", OPERATOR_TOKEN)
        ops, config_file = str(served.ops), str(tmp_path / "labrecon.toml")
        assert seen.cli(capsys, "check", "--config", config_file)[0] == 0
        assert seen.cli(capsys, "check", "--config", config_file, "--json")[0] == 0
        code, out = seen.cli(capsys, "check", "--config", config_file, "--show-config")
        assert code == 0 and "env LABRECON_AUTH__TOKEN" in out
        code, out = seen.cli(capsys, "check", "--config", config_file, "--show-config", "--json")
        assert code == 0 and json.loads(out)["auth.tokens.0.name"]["value"] == "alice"
        assert seen.cli(capsys, "status", "--socket", ops)[0] == 0
        code, out = seen.cli(capsys, "status", "--socket", ops, "--json")
        assert code == 0 and json.loads(out)["tools"]["masscan"]["calls"]
        assert seen.cli(capsys, "status", "--url", url)[0] == 0
        assert seen.cli(capsys, "scans", "list", "--socket", ops)[0] == 0
        assert seen.cli(capsys, "faults", "list", "--socket", ops)[0] == 0
        monkeypatch.delenv("LABRECON_AUTH__TOKEN")
        assert seen.cli(capsys, "status", "--url", url, "--token", WRONG_TOKEN)[0] != 0

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.log.read_text()

    log, out, lines = served.log.read_text(), served.out.read_text(), audit.read_text()
    seen.add("the daemon's stderr", log)
    seen.add("the daemon's stdout", out)
    seen.add("the audit log", lines)
    # Every surface was exercised: the log is at debug level, each call was audited by its owner.
    assert '"level": "debug"' in log
    answered = [json.loads(line) for line in lines.splitlines() if '"call_answered"' in line]
    assert {(entry["tool"], entry["owner"], entry["outcome"]) for entry in answered} >= {
        ("nmap", "alice", "ok"),
        ("masscan", "alice", "execution"),
        ("gobuster", "alice", "validation"),
    }
    seen.assert_clean()


def test_a_rotated_token_is_refused_from_the_reload_on_and_shown_nowhere(tmp_path, capsys):
    """The operator's token is rotated and bob's removed by a reload: the old ones get 401 on MCP and ops
    endpoints alike, the new one works, bob's open stream is closed, and so is the session the operator
    opened with the old token: a token rotated away loses its sessions, whatever name its successor has."""
    audit = tmp_path / "audit.jsonl"
    base = ["[logging]", 'level = "debug"', f'audit_path = "{audit}"']
    bobs = ["[[auth.tokens]]", 'name = "bob"', f'token = "{BOB_TOKEN}"']
    before = [*base, "[auth]", f'token = "{OPERATOR_TOKEN}"', *bobs]
    seen = Capture()
    operator, rotated, bob = (
        {"authorization": f"Bearer {token}"} for token in (OPERATOR_TOKEN, ROTATED_TOKEN, BOB_TOKEN)
    )
    with serve_process(tmp_path, config=before) as served:
        url, ops = served.url(), str(served.ops)
        with httpx.Client(base_url=url, timeout=60) as http, served.ops_client(timeout=60) as socket_ops:
            assert seen.response("/status, old token", http.get("/status", headers=operator)).status_code == 200
            session = open_session(httpx.Client(timeout=60, headers=operator), url)
            with http.stream("GET", "/sse", headers={**bob, "accept": "text/event-stream"}) as bobs_stream:
                bobs_events = events(bobs_stream)
                assert next(bobs_events).event == "endpoint"

                write_fake_config(tmp_path, [*base, "[auth]", f'token = "{ROTATED_TOKEN}"'])
                code, out = seen.cli(capsys, "reload", "--socket", ops, "--token", OPERATOR_TOKEN)
                assert code == 0 and "auth.token" in out and "auth.tokens" in out

                assert list(bobs_events) == []  # bob's stream ends: no token proves bob any more
            for where, answer in (
                ("/status, old token", http.get("/status", headers=operator)),
                ("/status, bob's token", http.get("/status", headers=bob)),
                ("/mcp, old token", http.post("/mcp", json=request("tools/list", {}), headers=operator)),
                ("socket /status, old token", socket_ops.get("/status", headers=operator)),
            ):
                assert seen.response(where, answer).status_code == 401, where
            for where, answer in (
                ("/status, new token", http.get("/status", headers=rotated)),
                ("socket /status, new token", socket_ops.get("/status", headers=rotated)),
            ):
                assert seen.response(where, answer).status_code == 200, where
            # The session the old token opened is gone: the new token opens its own.
            in_old = {**session_headers(session), **rotated}
            old_session = http.post("/mcp", json=request("tools/list", {}, 2), headers=in_old)
            assert seen.response("/mcp, old session, new token", old_session).status_code == 404
            assert open_session(httpx.Client(timeout=60, headers=rotated), url)
            status = seen.response("/status", http.get("/status", headers=rotated)).json()
            assert status["config"]["last_reload"]["changed"] == ["auth.token", "auth.tokens"]

        code, _ = seen.cli(capsys, "reload", "--socket", ops, "--token", OPERATOR_TOKEN)
        assert code == 4  # the old token is refused
        code, out = seen.cli(capsys, "status", "--socket", ops, "--token", ROTATED_TOKEN, "--json")
        assert code == 0
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.log.read_text()
    seen.add("the daemon's stderr", served.log.read_text())
    seen.add("the daemon's stdout", served.out.read_text())
    seen.add("the audit log", audit.read_text())
    reloads = [json.loads(line) for line in audit.read_text().splitlines() if '"config_reloaded"' in line]
    assert [entry["changed"] for entry in reloads] == [["auth.token", "auth.tokens"]]
    seen.assert_clean()


def raw_request(url: str, header_line: str) -> str:
    """Send a GET with one raw header line (which may not parse as a header at all); the whole answer."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=30) as connection:
        connection.sendall(f"GET /status HTTP/1.1\r\nHost: {address.host}\r\n{header_line}\r\n\r\n".encode())
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    return answer.decode("latin-1")


# --- configuration errors that involve a token -----------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labrecon.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            f'[[auth.tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\n'
            f'[[auth.tokens]]\nname = "bob"\ntoken = "{ALICE_TOKEN}"\n',
            "auth.tokens.1.token: the same token as auth.tokens.0.token",
        ),
        (
            f'[auth]\ntoken = "{OPERATOR_TOKEN}"\n[[auth.tokens]]\nname = "alice"\ntoken = "{OPERATOR_TOKEN}"\n',
            "auth.tokens.0.token: the same token as auth.token",
        ),
        (
            f'[[auth.tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\n'
            f'[[auth.tokens]]\nname = "alice"\ntoken = "{OPERATOR_TOKEN}"\n',
            "auth.tokens.1.name: 'alice' is already auth.tokens.0.name",
        ),
        (f'[auth]\ntoken = "{OPERATOR_TOKEN}"\ntokn = "{ALICE_TOKEN}"\n', "auth.tokn: unknown key"),
        (f'[[auth.tokens]]\ntoken = "{ALICE_TOKEN}"\n', "auth.tokens.0.name: Field required"),
    ],
)
@pytest.mark.parametrize("command", [["check"], ["check", "--show-config"], ["status"], ["serve"]])
def test_a_config_refused_over_its_tokens_names_keys_never_tokens(tmp_path, capsys, text, named, command):
    path = write(tmp_path, text)
    assert main([*command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert leaks(captured.out + captured.err) == []


def test_a_token_from_the_environment_that_equals_a_named_one_is_refused_by_key(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, f'[[auth.tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\n')
    monkeypatch.setenv("LABRECON_AUTH__TOKEN", ALICE_TOKEN)
    assert main(["check", "--show-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "auth.tokens.0.token: the same token as auth.token" in captured.err
    assert leaks(captured.out + captured.err) == []



@needs_private_network
def test_a_token_too_short_for_all_interfaces_is_refused_by_key(tmp_path):
    """In a namespace whose only interface is loopback: even a start that went wrong reaches nothing outside."""
    short = ALICE_TOKEN[:20]
    path = write(tmp_path, f'[[auth.tokens]]\nname = "alice"\ntoken = "{short}"\n')
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("labrecon_")}
    env["LABRECON_AUTH__TOKEN"] = OPERATOR_TOKEN
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "transports.cli", "serve", "--config", str(path),
         "--transport", "http", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "auth.tokens.0.token is shorter than 24 characters" in done.stderr
    assert short not in done.stdout + done.stderr and leaks(done.stdout + done.stderr) == []


# --- the command-line client ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\n", "\r\n", "\x00", "\u20ac"])
def test_a_token_no_header_can_carry_is_refused_without_quoting_it(tmp_path, capsys, bad):
    """Before, http.client refused it with an error that printed the whole header, token and all."""
    assert main(["status", "--socket", str(tmp_path / "none.sock"), "--token", OPERATOR_TOKEN + bad]) == 2
    captured = capsys.readouterr()
    assert "no HTTP header can carry" in captured.err
    assert leaks(captured.out + captured.err) == []


def test_a_config_token_no_header_can_carry_is_refused_without_quoting_it(tmp_path, capsys):
    path = write(tmp_path, f'[auth]\ntoken = "{OPERATOR_TOKEN}\\n"\n[http]\nops_socket = "{tmp_path / "none.sock"}"\n')
    assert main(["status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "no HTTP header can carry" in captured.err
    assert leaks(captured.out + captured.err) == []


def test_an_ops_client_with_a_wrong_token_gets_401_without_it_echoed(tmp_path):
    with serve_process(tmp_path, env={"LABRECON_AUTH__TOKEN": OPERATOR_TOKEN}) as served:
        with served.ops_client(timeout=30) as client:
            refused = client.get("/status", headers={"authorization": f"Bearer {WRONG_TOKEN}"})
        assert refused.status_code == 401 and refused.json() == {
            "error": "unauthorized",
            "message": "a valid bearer token is required",
        }
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert leaks(refused.text + str(refused.headers)) == []
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
    assert leaks(served.log.read_text() + served.out.read_text()) == []
