"""gobuster as a tool: URL building, its option allowlist, its line parser.

The URL is ours, never the user's: scheme, the policy-resolved address,
port and path. When the target was a hostname, the name travels in the
Host header (dir mode) or as the vhost base domain (vhost mode), so the
web server sees the name while the connection goes to the checked address;
no other name or domain is ever taken from the caller.
Redirect following, proxies, custom headers, output files and pattern
files are refused: each could send requests somewhere the policy never saw
or write where it should not. Wordlists are plain names inside the
configured directory.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from actors.flags import Choice, Duration, FileInDirectory, Grammar, Int, Option, ParsedOption, Pattern, render
from actors.policy import ResolvedTarget
from actors.results import InvalidCall
from actors.settings import ToolSettings
from actors.tools.base import ParsedResult, ToolArguments, ToolSpec, split_extra_args

PACKAGED_WORDLISTS = Path(__file__).resolve().parent.parent / "wordlists"
DEFAULT_WORDLIST = "common.txt"
DEFAULT_THREADS = 10
QUIET_FLAGS = ("-q", "--no-color", "-z")
_STATUS_LIST = r"[1-5][0-9]{2}(-[1-5][0-9]{2})?(,[1-5][0-9]{2}(-[1-5][0-9]{2})?){0,31}"
_EXTENSIONS = r"[A-Za-z0-9]{1,16}(,[A-Za-z0-9]{1,16}){0,19}"
_LENGTHS = r"[0-9]{1,9}(,[0-9]{1,9}){0,19}"
_PATH = re.compile(r"/[A-Za-z0-9._~%/+-]{0,510}", re.ASCII)

_FIXED = "set by labrecon so results can be parsed"
FORBIDDEN = {
    "-u": "the URL is built from target, scheme, port and path",
    "--url": "the URL is built from target, scheme, port and path",
    "-o": "output files are not allowed; results are returned to you",
    "--output": "output files are not allowed; results are returned to you",
    "-p": "pattern files are not allowed",
    "--pattern": "pattern files are not allowed",
    "--proxy": "proxies are not allowed",
    "-r": "following redirects could leave the allowed networks",
    "--follow-redirect": "following redirects could leave the allowed networks",
    "-H": "custom headers are not allowed; the Host header comes from the target",
    "--domain": "the vhost domain comes from the target; give the lab hostname as 'target'",
    "--headers": "custom headers are not allowed; the Host header comes from the target",
    "-c": "cookies are not allowed",
    "--cookies": "cookies are not allowed",
    "-U": "credentials are not allowed",
    "--username": "credentials are not allowed",
    "-P": "credentials are not allowed",
    "--password": "credentials are not allowed",
    "--client-cert-p12": "client certificates are not allowed",
    "--client-cert-p12-password": "client certificates are not allowed",
    "--client-cert-pem": "client certificates are not allowed",
    "--client-cert-pem-key": "client certificates are not allowed",
    "-X": "extension files are not allowed; use -x",
    "--extensions-file": "extension files are not allowed; use -x",
    "-a": "use --random-agent",
    "--useragent": "use --random-agent",
    "-e": _FIXED,
    "--expanded": _FIXED,
    "-n": _FIXED,
    "--no-status": _FIXED,
    "-v": _FIXED,
    "--verbose": _FIXED,
    "-q": _FIXED,
    "--quiet": _FIXED,
    "-z": _FIXED,
    "--no-progress": _FIXED,
    "--no-color": _FIXED,
}


class GobusterSettings(ToolSettings):
    """`[tools.gobuster]`: a thread cap, and the one directory wordlists are taken from."""

    binary: str = "gobuster"
    max_threads: int = Field(default=10, ge=1, le=200)
    wordlist_dir: Path = PACKAGED_WORDLISTS


class GobusterArguments(ToolArguments):
    mode: Literal["dir", "vhost"] = Field(
        default="dir", description="dir: find paths on a web server; vhost: find virtual host names."
    )
    scheme: Literal["http", "https"] = Field(default="http", description="URL scheme.")
    port: int | None = Field(default=None, ge=1, le=65535, description="TCP port; default 80/443 by scheme.")
    path: str = Field(default="/", max_length=512, description="Base path to enumerate under, e.g. '/app/'.")
    wordlist: str | None = Field(
        default=None,
        max_length=128,
        description="Name of a wordlist in the server's wordlist directory (default 'common.txt'); not a path.",
    )
    extensions: list[str] | None = Field(
        default=None, max_length=20, description="dir mode: file extensions to try, e.g. ['php', 'html']."
    )
    threads: int | None = Field(default=None, ge=1, le=200, description="Concurrent requests; capped by configuration.")

    @field_validator("path")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        if not _PATH.fullmatch(value) or ".." in value or "//" in value:
            raise ValueError("must be an absolute URL path like '/' or '/app/' without '..', queries or fragments")
        return value


class GobusterFinding(BaseModel):
    path: str | None = Field(default=None, description="dir mode: the path found.")
    host: str | None = Field(default=None, description="vhost mode: the virtual host found.")
    status: int | None = None
    size: int | None = None
    redirect: str | None = None


class GobusterResult(ParsedResult):
    findings: list[GobusterFinding] = Field(default_factory=list)
    unparsed_lines: int = Field(default=0, description="Non-empty output lines that were not findings.")


# ---------------------------------------------------------------- argv


@functools.lru_cache(maxsize=32)  # settings are frozen: one grammar per configuration
def grammar(settings: GobusterSettings, mode: str) -> Grammar:
    common = [
        Option(("-w", "--wordlist"), FileInDirectory(settings.wordlist_dir)),
        Option(("-t", "--threads"), Int(1, settings.max_threads, "a thread count")),
        Option(("--exclude-length",), Pattern(_LENGTHS, "content lengths like 0,1234")),
        Option(("-k", "--no-tls-validation")),
        Option(("-m", "--method"), Choice(("GET", "HEAD"))),
        Option(("--timeout",), Duration(1, 120)),  # 0s would mean requests without any timeout
        Option(("--delay",), Duration(0, 10)),  # a delay only slows requests down; 0 is gobuster's default
        Option(("--retry",)),
        Option(("--retry-attempts",), Int(1, 10)),
        Option(("--random-agent",)),
    ]
    if mode == "dir":
        specific = [
            Option(("-x", "--extensions"), Pattern(_EXTENSIONS, "extensions like php,html")),
            Option(("-s", "--status-codes"), Pattern(_STATUS_LIST, "status codes like 200,204,301-302")),
            Option(("-b", "--status-codes-blacklist"), Pattern(_STATUS_LIST, "status codes like 404,500-599")),
            Option(("-f", "--add-slash")),
            Option(("-d", "--discover-backup")),
            Option(("--hide-length",)),
        ]
    else:
        specific = [Option(("--append-domain",))]
    return Grammar([*common, *specific], forbidden=FORBIDDEN, tool=f"gobuster {mode}")


def _typed_tokens(args: GobusterArguments) -> list[tuple[str, list[str]]]:
    sources: list[tuple[str, list[str]]] = []
    if args.wordlist is not None:
        sources.append(("wordlist", ["--wordlist", args.wordlist]))
    if args.threads is not None:
        sources.append(("threads", ["--threads", str(args.threads)]))
    if args.extensions:
        if args.mode != "dir":
            raise InvalidCall("extensions apply only to mode 'dir'", field="extensions")
        sources.append(("extensions", ["--extensions", ",".join(e.lstrip(".") for e in args.extensions)]))
    sources.append(("extra_args", split_extra_args(args.extra_args)))
    return sources


def target_url(args: GobusterArguments, target: ResolvedTarget) -> str:
    host = f"[{target.tool_target}]" if target.version == 6 else target.tool_target
    port = f":{args.port}" if args.port is not None else ""
    return f"{args.scheme}://{host}{port}{args.path}"


def _host_header(args: GobusterArguments, hostname: str) -> str:
    default = 443 if args.scheme == "https" else 80
    return hostname if args.port in (None, default) else f"{hostname}:{args.port}"


def _defaults(parsed: list[ParsedOption], g: Grammar, settings: GobusterSettings) -> list[ParsedOption]:
    names = {item.name for item in parsed}
    extra: list[ParsedOption] = []
    if "-w" not in names:
        wordlist = g.option("-w")
        assert wordlist.value is not None
        try:
            extra.append(ParsedOption(wordlist, wordlist.value.canonical(DEFAULT_WORDLIST), "wordlist"))
        except ValueError as exc:
            raise InvalidCall(f"default wordlist unavailable: {exc}", field="wordlist") from None
    if "-t" not in names:
        extra.append(ParsedOption(g.option("-t"), str(min(DEFAULT_THREADS, settings.max_threads)), "threads"))
    return extra


def build_argv(args: GobusterArguments, target: ResolvedTarget, settings: GobusterSettings) -> list[str]:
    if target.kind == "cidr":
        message = "gobuster scans one web server; give an IP address or hostname, not a network"
        raise InvalidCall(message, field="target")
    g = grammar(settings, args.mode)
    parsed = g.parse_sources(_typed_tokens(args))
    parsed += _defaults(parsed, g, settings)
    names = {item.name for item in parsed}
    argv = [args.mode, "-u", target_url(args, target), *render(parsed)]
    if args.mode == "dir":
        if target.hostname:
            argv += ["-H", f"Host: {_host_header(args, target.hostname)}"]
        if "-s" in names and "-b" not in names:
            # gobuster refuses -s next to its default blacklist (404) unless the blacklist is emptied.
            argv.append("--status-codes-blacklist=")
    else:
        argv += _vhost_domain(parsed, target)
    return argv + list(QUIET_FLAGS)


def _vhost_domain(parsed: list[ParsedOption], target: ResolvedTarget) -> list[str]:
    """The target's hostname as the domain appended to each word; an address has none."""
    appended = [item for item in parsed if item.name == "--append-domain"]
    if target.hostname:
        return ["--domain", target.hostname] + ([] if appended else ["--append-domain"])
    if appended:
        raise InvalidCall(
            "--append-domain needs a hostname target: the domain comes from the target", field=appended[0].source
        )
    return []


# ---------------------------------------------------------------- output

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SIZE = r"(?:\s*\[Size:\s*(?P<size>[0-9]+)\])?"
_REDIRECT = r"(?:\s*\[-->\s*(?P<redirect>[^\]]*)\])?"
_DIR_LINE = re.compile(
    rf"(?:Found:\s*)?(?P<path>\S+)\s+\(Status:\s*(?P<status>[0-9]{{3}})\){_SIZE}{_REDIRECT}\s*$"
)
_VHOST_LINE = re.compile(
    rf"Found:\s*(?P<host>(?![/\s])(?!\S*://)\S+)\s+\(?Status:\s*(?P<status>[0-9]{{3}})\)?{_SIZE}{_REDIRECT}\s*$"
)
_PROGRESS = re.compile(r"Progress:\s*([0-9]+)\s*/\s*([0-9]+)")


def progress(line: str) -> float | None:
    found = _PROGRESS.findall(line)
    if not found:
        return None
    done, total = (int(x) for x in found[-1])
    return 100.0 * done / total if total else None


def _finding(line: str) -> GobusterFinding | None:
    if match := _VHOST_LINE.match(line):
        kind = "host"
    elif match := _DIR_LINE.match(line):
        kind = "path"
    else:
        return None
    size = match["size"]
    return GobusterFinding(
        **{kind: match[kind]},
        status=int(match["status"]),
        size=int(size) if size is not None else None,
        redirect=match["redirect"].strip() if match["redirect"] else None,
    )


def parse(stdout: bytes, truncated: bool) -> GobusterResult:
    result = GobusterResult(truncated=truncated)
    text = _ANSI.sub("", stdout.decode("utf-8", errors="replace"))
    for raw in re.split(r"[\r\n]+", text):
        line = raw.strip()
        if not line:
            continue
        finding = _finding(line)
        if finding is None:
            result.unparsed_lines += 1
        else:
            result.findings.append(finding)
    return result


def settings_schema(settings: GobusterSettings) -> dict[str, dict[str, Any]]:
    """The wordlists this server offers (read from `wordlist_dir` when the settings are put in force)."""
    offered = ", ".join(FileInDirectory(settings.wordlist_dir).available()) or "none"
    return {
        "wordlist": {"description": f"{GobusterArguments.model_fields['wordlist'].description} Offered: {offered}."},
        "threads": {"maximum": settings.max_threads},
    }


GOBUSTER = ToolSpec(
    name="gobuster",
    title="Gobuster web content and vhost discovery",
    description=(
        "Enumerate paths (mode 'dir') or virtual hosts (mode 'vhost') on one lab web server with gobuster. "
        "Give the target as an allowed IP or lab hostname plus scheme/port/path; a hostname is resolved by the "
        "server and sent as the Host header. 'wordlist' is the name of a server-side list (default "
        "'common.txt'), 'extensions' adds file extensions in dir mode, 'threads' is capped by configuration. "
        "extra_args accepts -w, -t, -x, -s, -b, --exclude-length, -k, -m GET|HEAD, --timeout, --delay, "
        "--retry, --retry-attempts, --random-agent, -f, -d, --hide-length (dir) and --append-domain (vhost; the "
        "domain is the target's hostname). Redirects are not followed; proxies, headers and output files are refused."
    ),
    settings=GobusterSettings,
    arguments=GobusterArguments,
    result_model=GobusterResult,
    version_argv=("version",),
    builder=build_argv,
    parser=parse,
    progress_parser=progress,
    settings_schema=settings_schema,
)
