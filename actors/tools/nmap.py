"""nmap as a tool: typed arguments, its option allowlist, its data directory, its XML parser.

nmap parses options with getopt_long_only, so `-script` means `--script`
and `-p80` means `-p 80`; the grammar reads those forms, and the argv is
rendered canonically. Timing stops at -T4: -T5 trades accuracy for speed
and is hard on lab hosts. Scripts run only if vetted (actors/nmap_scripts.py):
a category or -sC becomes the list of its vetted members, and the argv names
each script, never a category or expression nmap could widen. -sV makes nmap
add its whole `version` category on its own, so it is refused unless the
configuration admits all of them and the installed script.db holds no script
that was never vetted or denied. nmap looks in the password database's home
(`~/.nmap`) before its own files, so every run gets NMAPDIR, the data directory
found when the settings were built; without one, nmap is not run. IPv6 (`-6`)
is added from the target, never taken from the user.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring, iterparse
from pydantic import BaseModel, Field, PrivateAttr, field_validator

from actors.flags import Duration, Grammar, Int, Option, ParsedOption, PortList, render
from actors.nmap_scripts import NMAP_SCRIPTS, read_script_db
from actors.policy import ResolvedTarget
from actors.results import InvalidCall
from actors.runner import MINIMAL_ENV
from actors.settings import ToolSettings
from actors.tools.base import OptionalPorts, ParsedResult, ToolArguments, ToolSpec, split_extra_args

NMAP_MAX_RATE = 10_000  # packets per second; --min-rate/--max-rate above this are refused
# --host-timeout 0 switches nmap's per-host limit off, and nmap itself refuses 1.5 s or less.
NMAP_MIN_HOST_TIMEOUT_SEC = 2
DEFAULT_PORT_COUNT = 1000  # what nmap scans when no port option is given
FAST_PORT_COUNT = 100  # -F
SCAN_TYPES = {"connect": "-sT", "syn": "-sS", "version": "-sV", "ping": "-sn", "udp": "-sU"}
# -n always: nmap must never resolve a name itself (reverse DNS feeds the names its
# scripts follow redirects to); it is given the address the policy checked, nothing else.
OUTPUT_FLAGS = ("-oX", "-", "--stats-every", "2s", "-n")
VERSION_SCRIPTS = NMAP_SCRIPTS.members("version")  # what -sV makes nmap run besides --script
# nmap script and category names an operator lets calls choose from; only vetted
# scripts ever run, whatever is configured (see actors/nmap_scripts.toml).
DEFAULT_ALLOWED_SCRIPTS = (
    "default",
    "safe",
    "discovery",
    "version",
    "banner",
    "http-title",
    "http-headers",
    "http-methods",
    "ssl-cert",
    "ssh-hostkey",
    "smb-os-discovery",
    "dns-service-discovery",
)

FORBIDDEN = {
    "-iL": "targets come only from the 'target' field",
    "-iR": "random targets are never scanned",
    "-i": "targets come only from the 'target' field",
    "-o": "output files are not allowed; results are returned to you",
    "--append-output": "output files are not allowed",
    "--resume": "resuming from files is not allowed",
    "--datadir": "custom data files are not allowed",
    "--servicedb": "custom data files are not allowed",
    "--versiondb": "custom data files are not allowed",
    "--stylesheet": "the output format is fixed",
    "--webxml": "the output format is fixed",
    "--no-stylesheet": "the output format is fixed",
    "--exclude": "narrow the 'target' instead",
    "--excludefile": "narrow the 'target' instead",
    "--script-args": "script arguments are not allowed",
    "--script-args-file": "script arguments are not allowed",
    "--script-help": "not a scan",
    "--script-trace": "not allowed",
    "--script-updatedb": "not allowed",
    "--send-eth": "raw packet options are not allowed",
    "--send-ip": "raw packet options are not allowed",
    "--privileged": "privilege options are not allowed",
    "--unprivileged": "privilege options are not allowed",
    "-S": "source address spoofing is not allowed",
    "-D": "decoy scans are not allowed",
    "-e": "choosing the interface is not allowed",
    "-g": "source port spoofing is not allowed",
    "--source-port": "source port spoofing is not allowed",
    "--spoof-mac": "MAC spoofing is not allowed",
    "--proxies": "relaying through proxies is not allowed",
    "--data": "custom payloads are not allowed",
    "--data-string": "custom payloads are not allowed",
    "--data-length": "custom payloads are not allowed",
    "--ip-options": "custom IP options are not allowed",
    "--ttl": "custom packet fields are not allowed",
    "--badsum": "custom packet fields are not allowed",
    "--mtu": "fragmentation is not allowed",
    "-f": "fragmentation is not allowed",
    "-b": "FTP bounce scans relay through third parties",
    "-sI": "idle scans send traffic through a third-party zombie host",
    "-A": "use scan_type='version', scripts=['default'] and -O instead",
    "-6": "IPv6 is chosen automatically from the target",
    "-R": "reverse DNS of every address is not allowed; use -n or the default",
    "--dns-servers": "custom DNS servers are not allowed",
    "--system-dns": "not allowed",
    "-sL": "list scans are not supported",
    "--iflist": "not a scan",
    "--packet-trace": "debug output is not allowed",
    "-d": "debug output is not allowed",
    "-T5": "the fastest timing allowed is -T4",
}


# What makes a directory nmap's data directory: the NSE loader and the script index.
DATA_FILES = ("nse_main.lua", "scripts/script.db")


@dataclass(frozen=True)
class NmapData:
    """nmap's data directory as found when the settings were built, and what its script.db holds."""

    directory: str | None  # runs get it as NMAPDIR; None: nmap is not run, `problem` says why
    problem: str | None = None
    unvetted: tuple[str, ...] = ()  # scripts in its script.db that are neither vetted nor denied
    version_scripts: frozenset[str] = frozenset()  # what -sV makes it run: script.db's `version` category

    def problems(self) -> tuple[str, ...]:
        """What an operator should hear about: why nmap cannot run, or why -sV is refused."""
        if self.problem is not None:
            return (self.problem,)
        if self.unvetted:
            return (f"{self.unvetted_message()}; calls with -sV are refused",)
        return ()

    def unvetted_message(self) -> str:
        return f"nmap (data in {self.directory}) has scripts this labrecon has not vetted: {', '.join(self.unvetted)}"


def _data_candidates(binary: str) -> tuple[list[Path], str | None]:
    """Where nmap keeps its data, beside the binary a run would start, or why there is no binary."""
    path = binary if os.sep in binary else shutil.which(binary, path=MINIMAL_ENV["PATH"])
    if path is None or not os.path.isfile(path):
        return [], f"nmap's data directory cannot be found: the binary {binary!r} was not found"
    real = Path(os.path.realpath(path)).parent
    return [real.parent / "share" / "nmap", real], None  # an install's share/nmap; a build tree's own directory


def find_data(binary: str, datadir: str | None) -> NmapData:
    """Find nmap's data directory (`datadir`, or beside the binary) and read its script.db."""
    if datadir is not None:
        candidates, problem = [Path(datadir)], None
    else:
        candidates, problem = _data_candidates(binary)
    directory = next((c for c in candidates if all((c / name).is_file() for name in DATA_FILES)), None)
    if directory is None:
        holding = " and ".join(DATA_FILES)
        if datadir is not None:
            problem = f"[tools.nmap] datadir {datadir} does not hold {holding}"
        elif problem is None:
            tried = ", ".join(str(c) for c in candidates)
            problem = f"no nmap data directory (holding {holding}) in {tried}; set [tools.nmap] datadir"
        return NmapData(directory=None, problem=problem)
    try:
        scripts = read_script_db(directory / DATA_FILES[1])
    except (OSError, ValueError) as exc:
        return NmapData(directory=None, problem=f"nmap's script.db cannot be read: {exc}")
    return NmapData(
        directory=os.path.abspath(directory),
        unvetted=NMAP_SCRIPTS.unjudged(scripts),
        version_scripts=frozenset(name for name, categories in scripts.items() if "version" in categories),
    )


class NmapSettings(ToolSettings):
    """`[tools.nmap]`: which scripts calls may choose, how many ports one call may scan, where nmap's data is."""

    binary: str = "nmap"
    # nmap's data directory (holding nse_main.lua and scripts/script.db); by default found beside the binary.
    datadir: str | None = None
    allowed_scripts: tuple[str, ...] = DEFAULT_ALLOWED_SCRIPTS
    max_ports: int = Field(default=65535, ge=1, le=65535)
    # Tell nmap it may use raw sockets without being root (NMAP_PRIVILEGED): for a service user given
    # CAP_NET_RAW and CAP_NET_ADMIN, as deploy/labrecon.service does; without them its raw scans then fail.
    privileged: bool = False
    _data: NmapData = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._data = find_data(self.binary, self.datadir)

    @property
    def data(self) -> NmapData:
        """nmap's data directory and script.db as read when these settings were built."""
        return self._data

    @field_validator("allowed_scripts")
    @classmethod
    def _only_vetted_scripts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """A narrowing of the vetted scripts: each entry is a vetted script or an offered category."""
        words = tuple(dict.fromkeys(word.strip().lower() for word in value))
        NMAP_SCRIPTS.admitted(words)  # raises ValueError naming the entry and why it never runs
        return words


class NmapArguments(ToolArguments):
    ports: OptionalPorts = Field(
        default=None,
        description=(
            "Ports to scan: a string like '22,80,443', '1-1024' or 'T:80,U:53' ('1-65535' for all ports), "
            "a port number like 22, or a list like [22, 80, '8000-8100']."
        ),
    )
    scan_type: Literal["connect", "syn", "version", "ping", "udp"] | None = Field(
        default=None,
        description=(
            "connect (-sT, no privileges needed), syn (-sS), version (-sV, service/version detection), "
            "ping (-sn, host discovery only, no port scan), udp (-sU)."
        ),
    )
    top_ports: int | None = Field(default=None, ge=1, le=65535, description="Scan the N most common ports.")
    timing: int | None = Field(default=None, ge=0, le=4, description="Timing template 0 (slowest) to 4 (fast).")
    scripts: list[str] | None = Field(
        default=None,
        max_length=20,
        description=(
            "NSE script names or categories from the server's allowed set (e.g. default, safe, banner, "
            "http-title). Only vetted scripts that talk to the target alone ever run; a category runs its "
            "vetted members. Scripts that resolve names or reach other hosts (ftp-bounce, fcrdns, "
            "dns-recursion, broadcast-*, targets-*, whois-*) and the external, intrusive, exploit, dos, "
            "brute, malware, broadcast, fuzzer and vuln categories are refused."
        ),
    )


class NmapScript(BaseModel):
    id: str
    output: str = ""


class NmapPort(BaseModel):
    port: int
    protocol: str
    state: str | None = None
    reason: str | None = None
    service: str | None = None
    product: str | None = None
    version: str | None = None
    extrainfo: str | None = None
    scripts: list[NmapScript] = Field(default_factory=list)


class NmapHost(BaseModel):
    address: str | None = None
    mac: str | None = None
    status: str | None = None
    hostnames: list[str] = Field(default_factory=list)
    ports: list[NmapPort] = Field(default_factory=list)
    os_matches: list[str] = Field(default_factory=list)
    scripts: list[NmapScript] = Field(default_factory=list)
    partial: bool = Field(default=False, description="The output ended inside this host's record.")


class NmapResult(ParsedResult):
    hosts: list[NmapHost] = Field(default_factory=list)
    complete: bool = Field(default=False, description="The XML document was complete.")
    hosts_up: int | None = None
    hosts_down: int | None = None
    hosts_total: int | None = None
    elapsed_sec: float | None = None
    error: str | None = Field(default=None, description="nmap's own error message, if it reported one.")


# ---------------------------------------------------------------- argv


@dataclass(frozen=True)
class ScriptNames:
    """`--script` values: vetted script or category names that the configuration admits."""

    admitted: frozenset[str]
    allowed: tuple[str, ...]  # the configuration's words for `admitted`, for messages
    description: str = "vetted script names or categories"

    def canonical(self, raw: str) -> str:
        words: list[str] = []
        for word in raw.split(","):
            scripts = NMAP_SCRIPTS.expand(word)  # raises ValueError saying why it never runs
            word = word.strip().lower()
            if not self.admitted.issuperset(scripts):
                allowed = ", ".join(self.allowed) or "none"
                raise ValueError(f"{word!r} is not allowed here; this server allows {allowed}")
            if word not in words:
                words.append(word)
        return ",".join(words)


@functools.lru_cache(maxsize=32)  # settings are frozen: one set per configuration
def _admitted_scripts(settings: NmapSettings) -> frozenset[str]:
    return NMAP_SCRIPTS.admitted(settings.allowed_scripts)


@functools.lru_cache(maxsize=32)  # settings are frozen: one grammar per configuration
def grammar(settings: NmapSettings) -> Grammar:
    scripts = ScriptNames(_admitted_scripts(settings), settings.allowed_scripts)
    options = [
        Option(("-p",), PortList(settings.max_ports, ("T", "U"))),
        Option(("--top-ports",), Int(1, settings.max_ports, "a port count")),
        Option(("-F",)),
        *(Option((flag,)) for flag in SCAN_TYPES.values()),
        Option(("-sC",)),
        Option(("--script",), scripts, repeatable=True),
        Option(("-T",), Int(0, 4, "a timing template"), joined=True),
        Option(("-Pn",)),
        Option(("-n",)),
        Option(("-O",)),
        Option(("--open",)),
        Option(("--reason",)),
        Option(("--version-intensity",), Int(0, 9)),
        Option(("--version-light",)),
        Option(("--version-all",)),
        Option(("--max-retries",), Int(0, 10)),
        Option(("--host-timeout",), Duration(NMAP_MIN_HOST_TIMEOUT_SEC, settings.max_timeout_sec)),
        Option(("--scan-delay",), Duration(0, 60)),  # a delay only slows probes down; 0 is nmap's default
        Option(("--min-rate",), Int(1, NMAP_MAX_RATE, "packets per second")),
        Option(("--max-rate",), Int(1, NMAP_MAX_RATE, "packets per second")),
    ]
    return Grammar(options, forbidden=FORBIDDEN, single_dash_long=True, tool="nmap")


def _typed_tokens(args: NmapArguments) -> list[tuple[str, list[str]]]:
    sources: list[tuple[str, list[str]]] = []
    if args.ports is not None:
        sources.append(("ports", ["-p", args.ports]))
    if args.scan_type is not None:
        sources.append(("scan_type", [SCAN_TYPES[args.scan_type]]))
    if args.top_ports is not None:
        sources.append(("top_ports", ["--top-ports", str(args.top_ports)]))
    if args.timing is not None:
        sources.append(("timing", ["-T", str(args.timing)]))
    if args.scripts:
        sources.append(("scripts", ["--script", ",".join(args.scripts)]))
    sources.append(("extra_args", split_extra_args(args.extra_args)))
    return sources


def _script_selection(parsed: list[ParsedOption], settings: NmapSettings) -> list[str]:
    """The vetted scripts the call selects, each once, in the order asked for."""
    names: list[str] = []
    for item in parsed:
        if item.name == "-sC":
            selected = NMAP_SCRIPTS.members("default")
            if not _admitted_scripts(settings).issuperset(selected):
                message = "-sC needs the 'default' script category, which is not allowed here"
                raise InvalidCall(message, field=item.source)
        elif item.name == "--script":
            selected = tuple(n for word in (item.value or "").split(",") for n in NMAP_SCRIPTS.expand(word))
        else:
            continue
        names.extend(n for n in selected if n not in names)
    return names


def _check_port_budget(parsed: list[ParsedOption], settings: NmapSettings) -> list[str]:
    """Enforce `max_ports` also for -F and for nmap's implicit top 1000."""
    names = {item.name for item in parsed}
    if "-F" in names and settings.max_ports < FAST_PORT_COUNT:
        raise InvalidCall(f"-F scans {FAST_PORT_COUNT} ports; the limit is {settings.max_ports}", field="extra_args")
    chosen = names & {"-p", "--top-ports", "-F", "-sn"}
    if not chosen and settings.max_ports < DEFAULT_PORT_COUNT:
        return ["--top-ports", str(settings.max_ports)]
    return []


def _check_version_detection(parsed: list[ParsedOption], settings: NmapSettings) -> None:
    """-sV makes nmap run its whole `version` script category, whatever --script says."""
    asked = next((item for item in parsed if item.name == "-sV"), None)
    if asked is None:
        return
    data = settings.data
    if data.unvetted:
        message = f"{data.unvetted_message()}; version detection (-sV) would run them, so name vetted scripts instead"
        raise InvalidCall(message, field=asked.source)
    if not _admitted_scripts(settings).issuperset(data.version_scripts.union(VERSION_SCRIPTS)):
        message = "version detection (-sV) runs nmap's version scripts, which are not allowed here"
        raise InvalidCall(message, field=asked.source)


def build_argv(args: NmapArguments, target: ResolvedTarget, settings: NmapSettings) -> list[str]:
    if settings.data.directory is None:
        raise InvalidCall(f"nmap is not run here: {settings.data.problem}", field=None)
    parsed = grammar(settings).parse_sources(_typed_tokens(args))
    scripts = _script_selection(parsed, settings)
    _check_version_detection(parsed, settings)
    plain = [item for item in parsed if item.name not in ("-sC", "--script", "-n")]
    argv = [*OUTPUT_FLAGS]
    if target.version == 6:
        argv.append("-6")
    argv += render(plain)
    argv += _check_port_budget(parsed, settings)
    if scripts:
        argv += ["--script", ",".join(scripts)]
    argv.append(target.tool_target)
    return argv


def environment(settings: NmapSettings) -> Mapping[str, str]:
    """NMAPDIR: nmap reads its scripts from its own data directory, never from a `~/.nmap`; NMAP_PRIVILEGED
    when the settings say this user holds the capabilities raw scans need."""
    env = {"NMAPDIR": settings.data.directory} if settings.data.directory is not None else {}
    return {**env, "NMAP_PRIVILEGED": "1"} if settings.privileged else env


def problems(settings: NmapSettings) -> tuple[str, ...]:
    return settings.data.problems()


# ---------------------------------------------------------------- output

_TASKPROGRESS = re.compile(r'<taskprogress\b[^>]*\bpercent="([0-9]+(?:\.[0-9]+)?)"')
_ABOUT_DONE = re.compile(r"About ([0-9]+(?:\.[0-9]+)?)% done")


def progress(line: str) -> float | None:
    match = _TASKPROGRESS.search(line) or _ABOUT_DONE.search(line)
    return float(match[1]) if match else None


def _scripts(parent: Element) -> list[NmapScript]:
    return [NmapScript(id=s.get("id", ""), output=s.get("output", "")) for s in parent.findall("script")]


def _port(element: Element) -> NmapPort | None:
    try:
        number = int(element.get("portid", ""))
    except ValueError:
        return None
    state = element.find("state")
    service = element.find("service")
    return NmapPort(
        port=number,
        protocol=element.get("protocol", ""),
        state=state.get("state") if state is not None else None,
        reason=state.get("reason") if state is not None else None,
        service=service.get("name") if service is not None else None,
        product=service.get("product") if service is not None else None,
        version=service.get("version") if service is not None else None,
        extrainfo=service.get("extrainfo") if service is not None else None,
        scripts=_scripts(element),
    )


def _host(element: Element, *, partial: bool = False) -> NmapHost:
    host = NmapHost(partial=partial)
    for address in element.findall("address"):
        kind = address.get("addrtype")
        if kind == "mac":
            host.mac = address.get("addr")
        elif host.address is None:
            host.address = address.get("addr")
    status = element.find("status")
    host.status = status.get("state") if status is not None else None
    host.hostnames = [h.get("name", "") for h in element.iterfind("hostnames/hostname") if h.get("name")]
    host.ports = [p for p in (_port(e) for e in element.iterfind("ports/port")) if p is not None]
    host.os_matches = [m.get("name", "") for m in element.iterfind("os/osmatch") if m.get("name")]
    host.scripts = [s for hs in element.findall("hostscript") for s in _scripts(hs)]
    return host


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def parse(stdout: bytes, truncated: bool) -> NmapResult:
    """Parse `-oX -` output, keeping every host completed before any cut."""
    result = NmapResult(truncated=truncated)
    if not stdout.strip():
        result.parse_error = "nmap produced no XML output"
        return result
    if not truncated:
        try:
            # The common case, a whole document: one pass of the C parser.
            root = fromstring(stdout, forbid_dtd=False)
        except (ParseError, DefusedXmlException):
            pass  # cut short after all: read it element by element below
        else:
            _read_document(root, result)
            return result
    _read_stream(stdout, result)
    return result


def _read_document(root: Element, result: NmapResult) -> None:
    for host in root.iter("host"):
        result.hosts.append(_host(host))
    for element in root.iter("finished"):
        _finished(element, result)
    for element in root.iter("hosts"):
        _host_counts(element, result)
    result.complete = root.tag == "nmaprun"
    if not result.complete:
        result.truncated = True


def _read_stream(stdout: bytes, result: NmapResult) -> None:
    current: Element | None = None
    try:
        for event, element in iterparse(io.BytesIO(stdout), events=("start", "end"), forbid_dtd=False):
            if event == "start":
                if element.tag == "host" and current is None:
                    current = element
                continue
            if current is not None and element is current:  # the host record being read has ended
                result.hosts.append(_host(current))
                current = None
            elif element.tag == "finished":
                _finished(element, result)
            elif element.tag == "hosts" and current is None:
                _host_counts(element, result)
            elif element.tag == "nmaprun":
                result.complete = True
    except (ParseError, DefusedXmlException) as exc:
        result.parse_error = f"XML ended early or is malformed: {exc}"
        if current is not None:
            result.hosts.append(_host(current, partial=True))
    if not result.complete:
        result.truncated = True


def _finished(element: Element, result: NmapResult) -> None:
    elapsed = element.get("elapsed")
    result.elapsed_sec = float(elapsed) if elapsed and re.fullmatch(r"[0-9.]+", elapsed) else None
    if element.get("exit") == "error":
        result.error = element.get("errormsg") or "nmap reported an error"


def _host_counts(element: Element, result: NmapResult) -> None:
    result.hosts_up = _int(element.get("up"))
    result.hosts_down = _int(element.get("down"))
    result.hosts_total = _int(element.get("total"))


NMAP = ToolSpec(
    name="nmap",
    title="Nmap port and service scan",
    description=(
        "Scan one lab host, hostname or small network with nmap and get open ports, services and versions "
        "as structured data. Typical use: scan_type='connect' (no root needed) with ports='1-1024', or "
        "scan_type='version' to identify services; scan_type='ping' only finds live hosts. Targets must be "
        "inside the allowed lab networks/domains and networks are capped in size. extra_args accepts only "
        "allowlisted options (-p, -sT/-sS/-sU/-sV/-sn/-sC, --top-ports, -F, -T0..-T4, -Pn, -n, -O, --open, "
        "--reason, --version-intensity/--version-light/--version-all, --max-retries, --host-timeout, "
        "--scan-delay, --min-rate/--max-rate, --script); output, input-file, spoofing and script-argument "
        "options are refused."
    ),
    settings=NmapSettings,
    arguments=NmapArguments,
    result_model=NmapResult,
    version_argv=("--version",),
    builder=build_argv,
    parser=parse,
    progress_parser=progress,
    environment=environment,
    problems=problems,
)
