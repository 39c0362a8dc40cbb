"""masscan as a tool: typed arguments, its option allowlist, its JSON parser.

masscan reads any option as a config-file key (`--conf`, `--resume` and
`-c` load files, `--adapter-ip` spoofs), so the allowlist is short. The rate
is always rendered explicitly, because masscan's own default (100 pps) may
be above a lower configured cap. Output goes to stdout through
`--output-format json --output-filename -`: masscan's `-oJ` shorthand
refuses a file name starting with '-'. The target is given with `--range`
since masscan treats a bare token not starting with a digit (an IPv6
address such as `fd00::1`) as an unknown parameter.

masscan's JSON is not quite JSON: records are separated by leading commas,
older versions end with a trailing comma and `{finished: 1}`, and a killed
scan stops mid-record. The parser reads record by record and keeps
whatever is intact.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from pydantic import BaseModel, Field

from actors.flags import Grammar, Int, Option, PortList, render
from actors.policy import ResolvedTarget
from actors.settings import ToolSettings
from actors.tools.base import ParsedResult, Ports, ToolArguments, ToolSpec, split_extra_args

MASSCAN_DEFAULT_RATE = 100
OUTPUT_FLAGS = ("--output-format", "json", "--output-filename", "-")

_FILES = "configuration, include and resume files are not allowed"
_TARGETS = "the target comes only from the 'target' field"
_OUTPUT = "output options are fixed; results are returned to you"
_SPOOF = "adapter and source address options are not allowed"
FORBIDDEN = {
    "-c": _FILES,
    "--conf": _FILES,
    "--config": _FILES,
    "--resume": _FILES,
    "--resume-index": _FILES,
    "--resume-count": _FILES,
    "--includefile": _FILES,
    "--include-file": _FILES,
    "--excludefile": _FILES,
    "--exclude-file": _FILES,
    "--readscan": _FILES,
    "--pcap-payloads": _FILES,
    "--nmap-payloads": _FILES,
    "--hello-file": _FILES,
    "-iL": _TARGETS,
    "-iR": _TARGETS,
    "--range": _TARGETS,
    "--include": _TARGETS,
    "--exclude": _TARGETS,
    "-o": _OUTPUT,
    "--output-format": _OUTPUT,
    "--output-filename": _OUTPUT,
    "--output-file": _OUTPUT,
    "--append-output": _OUTPUT,
    "--rotate": _OUTPUT,
    "--rotate-dir": _OUTPUT,
    "--rotate-offset": _OUTPUT,
    "--pcap": _OUTPUT,
    "--redis": _OUTPUT,
    "--echo": _OUTPUT,
    "-e": _SPOOF,
    "-i": _SPOOF,
    "-S": _SPOOF,
    "-g": _SPOOF,
    "--adapter": _SPOOF,
    "--adapter-ip": _SPOOF,
    "--adapter-mac": _SPOOF,
    "--adapter-port": _SPOOF,
    "--router-mac": _SPOOF,
    "--source-ip": _SPOOF,
    "--source-port": _SPOOF,
    "--spoof-mac": _SPOOF,
    "--max-rate": "use --rate (capped by configuration)",
    "--infinite": "endless scans are not allowed",
    "--shard": "not supported",
    "--shards": "not supported",
    "--offline": "not supported",
    "--packet-trace": "debug output is not allowed",
    "--iflist": "not a scan",
    "--regress": "not a scan",
    "--interactive": "not supported",
    "--hello-string": "custom payloads are not allowed",
}


class MasscanSettings(ToolSettings):
    """`[tools.masscan]`: one sweep at a time by default, and a packet rate no call may exceed."""

    binary: str = "masscan"
    concurrency: int = Field(default=1, ge=1, le=64)
    max_rate: int = Field(default=1000, ge=1, le=1_000_000)


class MasscanArguments(ToolArguments):
    ports: Ports = Field(
        description=(
            "Ports to scan (required): a string like '80,443', '1-1024' or 'U:53' for UDP, a port number "
            "like 80, or a list like [80, 443, '8000-8100']."
        ),
    )
    rate: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Packets per second; capped by server configuration (default cap 1000). Defaults to 100.",
    )
    banners: bool = Field(default=False, description="Grab service banners from open ports (--banners).")


class MasscanBanner(BaseModel):
    service: str | None = None
    banner: str = ""


class MasscanPort(BaseModel):
    port: int
    protocol: str | None = None
    state: str | None = None
    reason: str | None = None
    ttl: int | None = None
    banners: list[MasscanBanner] = Field(default_factory=list)


class MasscanHost(BaseModel):
    address: str
    ports: list[MasscanPort] = Field(default_factory=list)


class MasscanResult(ParsedResult):
    hosts: list[MasscanHost] = Field(default_factory=list)
    complete: bool = Field(default=False, description="The JSON array was closed.")
    skipped: int = Field(default=0, description="Malformed or partial records that were skipped.")


# ---------------------------------------------------------------- argv


@functools.lru_cache(maxsize=32)  # settings are frozen: one grammar per configuration
def grammar(settings: MasscanSettings) -> Grammar:
    options = [
        Option(("--ports", "-p"), PortList(65535, ("U",))),
        Option(("--rate",), Int(1, settings.max_rate, "packets per second")),
        Option(("--banners",)),
        Option(("--open-only", "--open")),
        Option(("--ping",)),
        Option(("--retries",), Int(0, 5)),
        Option(("--wait",), Int(0, 60, "seconds")),  # 0 stops listening once sent; masscan's "forever" is refused
        Option(("--connection-timeout",), Int(1, 30, "seconds")),
        Option(("--seed",), Int(0, 2**32 - 1)),
    ]
    return Grammar(options, forbidden=FORBIDDEN, tool="masscan")


def build_argv(args: MasscanArguments, target: ResolvedTarget, settings: MasscanSettings) -> list[str]:
    sources: list[tuple[str, list[str]]] = [("ports", ["--ports", args.ports])]
    if args.rate is not None:
        sources.append(("rate", ["--rate", str(args.rate)]))
    if args.banners:
        sources.append(("banners", ["--banners"]))
    sources.append(("extra_args", split_extra_args(args.extra_args)))
    parsed = grammar(settings).parse_sources(sources)
    argv = ["--range", target.tool_target, *render(parsed)]
    if not any(item.name == "--rate" for item in parsed):
        argv += ["--rate", str(min(MASSCAN_DEFAULT_RATE, settings.max_rate))]
    return argv + list(OUTPUT_FLAGS)


# ---------------------------------------------------------------- output

_PERCENT_DONE = re.compile(r"([0-9]+(?:\.[0-9]+)?)% done")


def progress(line: str) -> float | None:
    """masscan rewrites one status line with '\\r'; the last figure is current."""
    found = _PERCENT_DONE.findall(line)
    return float(found[-1]) if found else None


def _records(text: str) -> tuple[list[dict[str, Any]], int, bool]:
    """Decode every intact `{...}` record; count the rest; note a closing ']'."""
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    skipped, closed, i, n = 0, False, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n,[":
            i += 1
        elif ch == "]":
            closed, i = True, i + 1
        elif ch == "{":
            try:
                obj, end = decoder.raw_decode(text, i)
            except ValueError:
                obj, end = None, text.find("\n", i)
                end = n if end < 0 else end
            if isinstance(obj, dict):
                records.append(obj)
            elif not re.match(r"\{\s*finished\s*:", text[i:end]):
                skipped += 1
            i = end
        else:
            end = text.find("\n", i)
            i = n if end < 0 else end
            skipped += 1
    return records, skipped, closed


def _port(raw: Any) -> MasscanPort | None:
    if not isinstance(raw, dict) or type(raw.get("port")) is not int:
        return None
    ttl = raw.get("ttl")
    service = raw.get("service")
    banners = []
    if isinstance(service, dict):
        banners.append(MasscanBanner(service=_str(service.get("name")), banner=_str(service.get("banner")) or ""))
    return MasscanPort(
        port=raw["port"],
        protocol=_str(raw.get("proto")),
        state=_str(raw.get("status")),
        reason=_str(raw.get("reason")),
        ttl=ttl if isinstance(ttl, int) else None,
        banners=banners,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _port_order(port: MasscanPort) -> tuple[str, int]:
    return (port.protocol or "", port.port)


def parse(stdout: bytes, truncated: bool) -> MasscanResult:
    records, skipped, closed = _records(stdout.decode("utf-8", errors="replace"))
    hosts: dict[str, dict[tuple[int, str | None], MasscanPort]] = {}
    for record in records:
        address = record.get("ip")
        ports = record.get("ports")
        if not isinstance(address, str) or not isinstance(ports, list):
            if "finished" not in record:
                skipped += 1
            continue
        table = hosts.setdefault(address, {})
        for raw in ports:
            port = _port(raw)
            if port is None:
                skipped += 1
                continue
            key = (port.port, port.protocol)
            known = table.get(key)
            if known is None:
                table[key] = port
            else:  # status and banner records for one port arrive separately
                known.state = known.state or port.state
                known.reason = known.reason or port.reason
                known.ttl = known.ttl if known.ttl is not None else port.ttl
                known.banners.extend(port.banners)
    result = MasscanResult(
        hosts=[MasscanHost(address=a, ports=sorted(t.values(), key=_port_order)) for a, t in hosts.items()],
        complete=closed,
        skipped=skipped,
        truncated=truncated or (bool(stdout.strip()) and not closed),
    )
    if skipped:
        result.parse_error = f"{skipped} malformed or partial record(s) skipped"
    return result


def settings_schema(settings: MasscanSettings) -> dict[str, dict[str, Any]]:
    """The rate cap this server enforces, so a client does not learn it from a refusal."""
    return {"rate": {"maximum": settings.max_rate}}


MASSCAN = ToolSpec(
    name="masscan",
    title="Masscan fast port sweep",
    description=(
        "Sweep a lab host or small lab network for open ports with masscan (SYN scan, needs raw-socket "
        "privileges on the server). 'ports' is required, e.g. '22,80,443' or '1-1024'; 'rate' (packets "
        "per second) is capped by configuration; 'banners' grabs service banners. Returns hosts with open "
        "ports. Targets must be inside the allowed lab networks. extra_args accepts only --ports/-p, --rate, "
        "--banners, --open-only, --ping, --retries, --wait, --connection-timeout and --seed."
    ),
    settings=MasscanSettings,
    arguments=MasscanArguments,
    result_model=MasscanResult,
    version_argv=("--version",),
    builder=build_argv,
    parser=parse,
    progress_parser=progress,
    settings_schema=settings_schema,
)
