"""Readiness for a service manager (sd_notify), and the systemd unit in deploy/.

The serve tests run the real `labrecon serve` on fake tools, loopback only, with `NOTIFY_SOCKET` naming
a datagram socket the test binds, and read what the daemon tells it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from supervisor.config import default_store_path
from tests.fakes.install import install_fake
from transports import systemd
from transports.cli import build_parser

LABRECON = str(Path(sys.executable).with_name("labrecon"))
UNIT = Path(__file__).resolve().parents[1] / "deploy" / "labrecon.service"
DEADLINE = 30.0  # a hang guard only


class NotifySocket:
    """A service manager's end: a datagram socket that collects what the daemon says."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(DEADLINE)
        self.messages: list[list[str]] = []

    def wait_for(self, field: str) -> list[str]:
        """The next message carrying `field` (those before it are kept in `messages`)."""
        while True:
            try:
                message = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                raise AssertionError(f"no {field} within {DEADLINE}s; got {self.messages}") from None
            self.messages.append(message)
            if field in message:
                return message

    def pending(self) -> list[str] | None:
        """A message already queued, or None: sending a datagram queues it before `sendto` returns."""
        self.sock.settimeout(0)
        try:
            return self.sock.recv(4096).decode().split("\n")
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(DEADLINE)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[NotifySocket, str]]:
    """(socket, NOTIFY_SOCKET value) for a path socket; the directory is short, for AF_UNIX's path limit."""
    with tempfile.TemporaryDirectory(prefix="sd") as directory:
        path = os.path.join(directory, "notify")
        listener = NotifySocket(path)
        try:
            yield listener, path
        finally:
            listener.close()


# --- the datagrams ---------------------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent():
    assert systemd.notify_address({}) is None
    assert systemd.ready("serving", environ={}) is False
    assert systemd.stopping(environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False  # not an address we speak


def test_ready_with_status_is_one_datagram_to_a_path_socket(notify_socket):
    listener, path = notify_socket
    assert systemd.ready("serving MCP\non stdio", environ={"NOTIFY_SOCKET": path}) is True
    assert listener.pending() == ["READY=1", "STATUS=serving MCP on stdio"]
    assert systemd.stopping(environ={"NOTIFY_SOCKET": path}) is True
    assert listener.pending() == ["STOPPING=1"]


def test_an_abstract_socket_is_named_with_a_leading_at():
    name = f"labrecon-test-{uuid.uuid4().hex}"
    listener = NotifySocket(b"\0" + name.encode())
    try:
        assert systemd.notify_address({"NOTIFY_SOCKET": f"@{name}"}) == b"\0" + name.encode()
        assert systemd.ready(environ={"NOTIFY_SOCKET": f"@{name}"}) is True
        assert listener.pending() == ["READY=1"]
    finally:
        listener.close()


def test_a_reload_is_reloading_with_the_monotonic_time_then_ready(notify_socket):
    listener, path = notify_socket
    environ = {"NOTIFY_SOCKET": path}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(environ=environ) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, stamp = listener.pending()
    assert first == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=") and before <= int(stamp.split("=")[1]) <= after
    assert systemd.ready("config abc123 in force", environ=environ) is True
    assert listener.pending() == ["READY=1", "STATUS=config abc123 in force"]


def test_a_failing_send_returns_false_and_is_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(systemd, "_failure_logged", threading.Event())
    environ = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    with caplog.at_level(logging.WARNING, logger="labrecon.systemd"):
        assert systemd.ready(environ=environ) is False
        assert systemd.stopping(environ=environ) is False
    assert [record.getMessage() for record in caplog.records] == [
        "the service manager could not be notified (logged once)"
    ]


def test_the_watchdog_follows_watchdog_usec_for_this_process_only(notify_socket):
    _, path = notify_socket
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    dog = systemd.Watchdog.from_environ(lambda: True, mine)
    assert dog is not None and dog.interval_sec == 15.0
    assert systemd.Watchdog.from_environ(lambda: True, {"NOTIFY_SOCKET": path}) is None
    assert systemd.Watchdog.from_environ(lambda: True, {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert systemd.Watchdog.from_environ(lambda: True, {"WATCHDOG_USEC": "30000000"}) is None


def test_a_watchdog_beat_pings_only_while_the_daemon_answers(notify_socket):
    listener, path = notify_socket
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    answers: list[object] = [True, False, RuntimeError("the supervisor did not answer")]

    def alive() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    dog = systemd.Watchdog.from_environ(alive, environ)
    assert dog is not None
    assert dog.beat() is True
    assert listener.pending() == ["WATCHDOG=1"]
    assert dog.beat() is False
    assert dog.beat() is False
    assert listener.pending() is None


# --- labrecon serve ----------------------------------------------------------------------------


def serve_config(directory: Path) -> Path:
    lines = ["[policy]", "dns = false"]
    for tool in ("nmap", "masscan", "gobuster"):
        lines += [f"[tools.{tool}]", f'binary = "{install_fake(directory / "bin", tool)}"']
    config = directory / "labrecon.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@contextlib.contextmanager
def labrecon_serve(tmp_path: Path, notify: str, *argv: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABRECON_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC="200000")  # a beat every 0.1 s
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [LABRECON, "serve", "--config", str(serve_config(tmp_path)), *argv],
        env=env,
        stdin=subprocess.PIPE,  # stdio serves until SIGTERM: the pipe stays open
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(DEADLINE)
        assert process.stdin is not None
        process.stdin.close()


def test_http_daemon_is_ready_once_listening_and_says_stopping_on_sigterm(tmp_path, notify_socket):
    listener, path = notify_socket
    with labrecon_serve(tmp_path, path, "--transport", "http", "--host", "127.0.0.1", "--port", "0") as process:
        ready = listener.wait_for("READY=1")
        status = next(field for field in ready if field.startswith("STATUS="))
        url = re.fullmatch(r"STATUS=serving MCP on (http://127\.0\.0\.1:\d+)", status)
        assert url is not None, status
        assert httpx.get(url.group(1) + "/livez", timeout=10).json() == {"live": True}  # listening already
        listener.wait_for("WATCHDOG=1")

        process.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING=1")
        assert "STATUS=received SIGTERM" in stopping
        assert process.wait(DEADLINE) == 0


def test_stdio_server_is_ready_once_reading_and_says_stopping_on_sigterm(tmp_path, notify_socket):
    listener, path = notify_socket
    with labrecon_serve(tmp_path, path) as process:
        assert listener.wait_for("READY=1") == ["READY=1", "STATUS=serving MCP on stdio"]
        listener.wait_for("WATCHDOG=1")

        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1")
        assert process.wait(DEADLINE) == 0


def test_sighup_is_reloading_then_ready_and_the_daemon_serves_on(tmp_path, notify_socket):
    listener, path = notify_socket
    with labrecon_serve(tmp_path, path, "--transport", "http", "--host", "127.0.0.1", "--port", "0") as process:
        listener.wait_for("READY=1")
        process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING=1")
        assert any(field.startswith("MONOTONIC_USEC=") for field in reloading)
        assert listener.wait_for("READY=1") == ["READY=1", "STATUS=serving; configuration reloaded"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0


# --- the unit ----------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values, in order (a key may repeat); comments and blank lines skipped."""
    unit: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{line!r} outside a section"
        assert not line.endswith("\\"), "keep each setting on one line"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match is not None, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_is_a_notify_service_that_reloads_on_sighup_and_outwaits_the_grace():
    service = read_unit(UNIT)["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "KillMode") == "mixed"  # SIGTERM to the daemon alone: it ends its runs itself

    command = shlex.split(one(service, "ExecStart"))
    assert command[0] == "/opt/labrecon/bin/labrecon"
    args = build_parser().parse_args(command[1:])  # what the real CLI makes of it
    assert (args.command, args.transport, args.config) == ("serve", "http", "/etc/labrecon/labrecon.toml")
    assert seconds(one(service, "TimeoutStopSec")) > args.grace
    assert seconds(one(service, "WatchdogSec")) > 0


def test_the_unit_runs_hardened_with_only_the_raw_socket_capabilities():
    service = read_unit(UNIT)["Service"]
    assert one(service, "User") == "labrecon"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one(service, key) == "yes", key
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "SystemCallArchitectures") == "native"
    raw = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(one(service, "CapabilityBoundingSet").split()) == raw
    assert set(one(service, "AmbientCapabilities").split()) == raw
    families = set(one(service, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}


def test_the_unit_keeps_the_scan_store_in_its_state_directory(monkeypatch):
    service = read_unit(UNIT)["Service"]
    assert one(service, "StateDirectory") == "labrecon"
    environment = dict(item.split("=", 1) for value in service["Environment"] for item in shlex.split(value))
    monkeypatch.setenv("XDG_STATE_HOME", environment["XDG_STATE_HOME"])
    assert default_store_path() == "/var/lib/labrecon/scans.sqlite3"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # The unit names the install path; here the labrecon of this environment stands in for it.
    unit = tmp_path / "labrecon.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/labrecon/bin/labrecon", LABRECON))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "labrecon.service" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr
