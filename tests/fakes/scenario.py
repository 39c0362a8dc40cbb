"""What the fake scanners share: their scenario, their call records, and the ways they misbehave.

A fake is started through a symlink such as ``/tmp/x/nmap``. Next to that
path it reads ``nmap.scenario.json`` (how to behave) and appends to
``nmap.calls.jsonl`` (what happened), so every test gets its own fake without
touching the real binaries. Invoked from this directory directly, a fake only
prints and records nothing.

Modes (``"mode"`` in the scenario, default ``"ok"``):

- ``ok``: print the tool's output for its argv (after ``delay_sec``) and exit
  with ``exit_code`` (default 0);
- ``slow``: like ``ok``, spread over ``delay_sec`` (default 2) with ``steps``
  progress reports on the way;
- ``block``: print the opening output, wait until ``release_file`` exists,
  then finish like ``ok``; tests count the blocked calls and then release them;
- ``fail``: print an error (``stderr`` overrides the tool's own) and exit with
  ``exit_code`` (default 1);
- ``hang``: print the opening output and wait forever;
- ``hang_with_child``: fork a child that waits forever too and record its pid
  as ``child_pid``; with ``parent_exits`` the parent prints its output and
  exits while the child keeps the pipes open, with ``child_closes_pipes`` the
  child lets go of stdout and stderr first;
- ``detach``: start a process that leaves the group the way a daemon does
  (fork, ``setsid``, fork again, stdio on ``/dev/null``) and waits forever,
  recorded as ``detached_pid``; the process in between exits at once, so the
  detached one is re-parented, unless ``detach_child_stays`` (then it waits
  too, recorded as ``child_pid``). With ``detached_unmarked`` the detached
  process drops the environment it was given. Then the fake hangs, or with
  ``parent_exits`` prints its output and exits;
- ``flood``: write ``flood_bytes`` (default 200 MB) to ``flood_stream``
  (``stdout`` or ``stderr``) and exit 0;
- ``crash``: print part of the output, then die of ``signal`` (default SIGSEGV).

``ignore_term`` makes the fake (and its child) ignore SIGTERM,
``child_ignores_term`` only its child. Version
queries are answered normally in every mode.

Each call appends a ``start`` record (argv, pid, ppid, time, mono, mode,
ray_node) and, when the fake exits by itself, an ``end`` record;
``install.read_calls`` merges them per call. ``ray_node`` is the Ray node the
call ran on, found without Ray: the nearest ancestor process that is a raylet,
read from its command line as ``{"node_id": ..., "resources": {name: amount}}``
(the custom resources it advertises, such as ``labrecon_a``, among them);
``null`` when no raylet is among the ancestors. Fakes never open a socket:
everything they report is made up from the argv and the scenario.
"""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SCENARIO_SUFFIX = ".scenario.json"
CALLS_SUFFIX = ".calls.jsonl"
FAKES_DIR = os.path.dirname(os.path.realpath(__file__))
DEFAULT_FLOOD_BYTES = 200 * 1000 * 1000
RELEASE_POLL_SEC = 0.01

Piece = tuple[int, str]  # (file descriptor, text)
OUT, ERR = 1, 2


# --------------------------------------------------------------------------- argv


@dataclass
class Args:
    """A loose reading of an argv: option values by name, and the remaining positional tokens."""

    options: dict[str, list[str]] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)

    def has(self, *names: str) -> bool:
        return any(name in self.options for name in names)

    def last(self, *names: str, default: str | None = None) -> str | None:
        for name in names:
            if self.options.get(name):
                return self.options[name][-1]
        return default

    def all(self, *names: str) -> list[str]:
        return [value for name in names for value in self.options.get(name, [])]


def parse_argv(argv: Iterable[str], valued: Iterable[str]) -> Args:
    """Split argv the way the real tools roughly do.

    ``valued`` names the options that take a value: as the next token
    (``-p 80``, ``-oX -``), after ``=`` (``--rate=10``) or, for short and
    single-dash forms, joined (``-p80``, ``-T4``). Every other token starting
    with ``-`` is a flag; everything else is positional (targets, modes).
    """
    valued = set(valued)
    joinable = sorted((v for v in valued if not v.startswith("--")), key=len, reverse=True)
    args = Args()
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            args.positionals.extend(tokens[i:])
            break
        if not token.startswith("-") or token == "-":
            args.positionals.append(token)
            continue
        name, eq, value = token.partition("=")
        if eq and (name in valued or name.startswith("--")):
            args.options.setdefault(name, []).append(value)
        elif token in valued:
            args.options.setdefault(token, []).append(tokens[i] if i < len(tokens) else "")
            i += 1
        else:
            prefix = next((v for v in joinable if token.startswith(v) and len(token) > len(v)), None)
            if prefix is None:
                args.options.setdefault(token, []).append("")
            else:
                args.options.setdefault(prefix, []).append(token[len(prefix):])
    return args


def parse_ports(spec: str) -> list[tuple[int, int]]:
    """Port ranges from an nmap/masscan port list: ``22,80``, ``1-1024``, ``T:80,U:53``, ``-``."""
    ranges = []
    for item in spec.split(","):
        item = item.strip()
        if ":" in item:
            item = item.split(":", 1)[1]
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:
            lo = int(low) if low else 1
            hi = (int(high) if high else 65535) if dash else lo
        except ValueError:
            continue  # service names such as "http": not worth resolving here
        if 0 <= lo <= hi <= 65535:
            ranges.append((lo, hi))
    return ranges


def port_count(ranges: list[tuple[int, int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def port_in(port: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


# --------------------------------------------------------------------------- made-up facts

# What a lab host typically answers on a port: service name, product, version, banner.
SERVICES: dict[int, tuple[str, str, str, str]] = {
    21: ("ftp", "vsftpd", "3.0.5", "220 (vsFTPd 3.0.5)"),
    22: ("ssh", "OpenSSH", "9.2p1 Debian 2+deb12u2", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u2"),
    25: ("smtp", "Postfix smtpd", "", "220 mail.lab.internal ESMTP Postfix"),
    53: ("domain", "ISC BIND", "9.18.24", ""),
    80: ("http", "nginx", "1.22.1", "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html"),
    110: ("pop3", "Dovecot pop3d", "", "+OK Dovecot ready."),
    139: ("netbios-ssn", "Samba smbd", "4.6.2", ""),
    443: ("https", "nginx", "1.22.1", ""),
    445: ("microsoft-ds", "Samba smbd", "4.6.2", ""),
    3306: ("mysql", "MySQL", "8.0.35", ""),
    5432: ("postgresql", "PostgreSQL DB", "15.5", ""),
    6379: ("redis", "Redis key-value store", "7.0.15", ""),
    8080: ("http-proxy", "Apache Tomcat", "10.1.16", "HTTP/1.1 200 \r\nContent-Type: text/html"),
}


@dataclass(frozen=True)
class OpenPort:
    port: int
    protocol: str = "tcp"
    service: str = "unknown"
    product: str = ""
    version: str = ""
    banner: str = ""


def open_ports(scenario: dict) -> list[OpenPort]:
    """The scenario's ``ports``: numbers, or objects naming port/protocol/service/product/version."""
    ports = []
    for entry in scenario.get("ports", [22, 80]):
        if isinstance(entry, int):
            entry = {"port": entry}
        name, product, version, banner = SERVICES.get(entry["port"], ("unknown", "", "", ""))
        ports.append(
            OpenPort(
                port=entry["port"],
                protocol=entry.get("protocol", "tcp"),
                service=entry.get("service", name),
                product=entry.get("product", product),
                version=entry.get("version", version),
                banner=entry.get("banner", banner),
            )
        )
    return sorted(ports, key=lambda p: (p.protocol, p.port))


def up_hosts(target: str, scenario: dict) -> tuple[list[str], int] | None:
    """The hosts of ``target`` that answer, and how many addresses it covers; None if unusable.

    A scenario may list ``up_hosts``; otherwise an address is up, and of a
    network only its first host is.
    """
    try:
        network = ipaddress.ip_network(target, strict=False)
    except ValueError:
        return None
    listed = scenario.get("up_hosts")
    if listed is not None:
        up = [h for h in listed if ipaddress.ip_address(h) in network]
    elif network.num_addresses <= 2:
        up = [str(network.network_address)]
    else:
        up = [str(network.network_address + 1)]
    return up, network.num_addresses


# --------------------------------------------------------------------------- where the call runs


def ray_node(pid: int | None = None) -> dict | None:
    """The Ray node the process ``pid`` (default: this one) runs on, or None outside a Ray node.

    Walks up the parents through /proc to the first raylet, the process that
    starts every worker of its node, and reads its command line.
    """
    pid = os.getpid() if pid is None else pid
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = [arg.decode(errors="replace") for arg in file.read().split(b"\0")[:-1]]
            with open(f"/proc/{pid}/stat", "rb") as file:
                parent = int(file.read().rsplit(b")", 1)[1].split()[1])  # the name before ")" may hold spaces
        except (OSError, ValueError, IndexError):
            return None  # gone meanwhile, or not ours to read
        if argv and os.path.basename(argv[0]) == "raylet":
            return raylet_node(argv)
        pid = parent
    return None


def raylet_node(argv: list[str]) -> dict:
    """A raylet's node id and the resources it advertises, from its command line.

    Ray 2.60 starts a raylet with ``--node_id=HEX`` and
    ``--static_resource_list=name,amount,name,amount,...``.
    """
    options = dict(arg[2:].partition("=")[::2] for arg in argv[1:] if arg.startswith("--"))
    listed = options.get("static_resource_list", "").split(",")
    resources = {}
    for name, amount in zip(listed[::2], listed[1::2], strict=False):
        try:
            resources[name] = float(amount)
        except ValueError:
            continue
    return {"node_id": options.get("node_id"), "resources": resources}


# --------------------------------------------------------------------------- the act


class Tool:
    """One tool's output for one argv, phase by phase. Subclasses fill in what they print."""

    name = "tool"

    def __init__(self, argv: list[str], scenario: dict) -> None:
        self.argv = argv
        self.scenario = scenario

    def version(self) -> tuple[list[Piece], int] | None:
        """Output and exit code if argv asks for the version, else None."""
        return None

    def usage_error(self) -> tuple[list[Piece], int] | None:
        """Output and exit code if argv is unusable for a scan (as the real tool would refuse it)."""
        return None

    def opening(self) -> list[Piece]:
        return []

    def progress(self, percent: float) -> list[Piece]:
        return []

    def results(self) -> list[Piece]:
        return []

    def closing(self) -> list[Piece]:
        return []

    def failure(self) -> str:
        return f"{self.name}: failed\n"

    def quick_progress(self) -> list[float]:
        """Progress reported by a run that is not slow."""
        return []


def main(tool_class: Callable[[list[str], dict], Tool]) -> None:
    invoked = os.path.abspath(sys.argv[0])
    recording = os.path.realpath(os.path.dirname(invoked)) != FAKES_DIR
    scenario = _load(invoked + SCENARIO_SUFFIX)
    tool = tool_class(sys.argv[1:], scenario)
    mode = scenario.get("mode", "ok")
    calls = invoked + CALLS_SUFFIX if recording else None

    def record(event: str, **extra: object) -> None:
        if calls is None:
            return
        entry = {"event": event, "pid": os.getpid(), "time": time.time(), "mono": time.monotonic(), **extra}
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def finish(code: int) -> None:
        record("end", exit_code=code)
        sys.exit(code)

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a closed pipe ends the fake quietly, like a C tool
    if scenario.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    env = {key: os.environ[key] for key in ("HOME", "NMAPDIR", "NMAP_PRIVILEGED") if key in os.environ}
    start = {"argv": sys.argv[1:], "ppid": os.getppid(), "mode": mode, "env": env, "ray_node": ray_node()}
    answer = tool.version() or tool.usage_error()
    if answer is not None:
        record("start", **start)
        _emit(answer[0])
        finish(answer[1])

    if mode == "hang_with_child":
        child = os.fork()
        if child == 0:
            if scenario.get("child_ignores_term"):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if scenario.get("child_closes_pipes"):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, OUT)
                os.dup2(devnull, ERR)
            _wait_forever()
        record("start", child_pid=child, **start)
        _emit(tool.opening())
        if scenario.get("parent_exits"):
            _emit(tool.results() + tool.closing())
            finish(0)
        _wait_forever()

    if mode == "detach":
        detached, middle = _detach(scenario)
        record("start", detached_pid=detached, child_pid=middle, **start)
        _emit(tool.opening())
        if scenario.get("parent_exits"):
            _emit(tool.results() + tool.closing())
            finish(0)
        _wait_forever()

    record("start", **start)
    if mode == "fail":
        _emit([(ERR, scenario.get("stderr", tool.failure()))])
        finish(int(scenario.get("exit_code", 1)))
    if mode == "flood":
        _flood(OUT if scenario.get("flood_stream", "stdout") == "stdout" else ERR,
               int(scenario.get("flood_bytes", DEFAULT_FLOOD_BYTES)))
        finish(0)

    _emit(tool.opening())
    if mode == "hang":
        _wait_forever()
    if mode == "crash":
        results = "".join(text for fd, text in tool.results() if fd == OUT)
        _emit([(OUT, results[: len(results) // 2])])
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), int(scenario.get("signal", signal.SIGSEGV)))
        os._exit(128 + int(scenario.get("signal", signal.SIGSEGV)))
    if mode == "block":
        release = scenario["release_file"]
        while not os.path.exists(release):
            time.sleep(RELEASE_POLL_SEC)
    if mode == "slow":
        steps = max(1, int(scenario.get("steps", 4)))
        pause = float(scenario.get("delay_sec", 2.0)) / steps
        for step in range(steps):
            time.sleep(pause)
            _emit(tool.progress(100.0 * (step + 1) / (steps + 1)))
    else:
        time.sleep(float(scenario.get("delay_sec", 0)))
        for percent in tool.quick_progress():
            _emit(tool.progress(percent))
    _emit(tool.results() + tool.closing())
    finish(int(scenario.get("exit_code", 0)))


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _emit(pieces: Iterable[Piece]) -> None:
    for fd, text in pieces:
        _write(fd, text.encode())


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _flood(fd: int, total: int) -> None:
    chunk = (b"x" * 127 + b"\n") * 8192  # 1 MiB of short lines
    while total > 0:
        _write(fd, chunk[:total])
        total -= len(chunk)


def _detach(scenario: dict) -> tuple[int, int | None]:
    """Fork, ``setsid``, fork again: the grandchild leads no group of ours. Returns its pid and the middle one's."""
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(readable)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(writable)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, OUT, ERR):
                    os.dup2(devnull, fd)
                if scenario.get("detached_unmarked"):
                    os.execve(sys.executable, [sys.executable, "-c", WAIT_FOREVER], {})
                _wait_forever()
            os.write(writable, str(grandchild).encode())
            os.close(writable)
            if scenario.get("detach_child_stays"):
                _wait_forever()
        finally:
            os._exit(0)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        detached = int(pipe.read())
    if scenario.get("detach_child_stays"):
        return detached, child
    os.waitpid(child, 0)
    return detached, None


WAIT_FOREVER = "import signal\nwhile True: signal.pause()"


def _wait_forever() -> None:
    while True:
        signal.pause()
