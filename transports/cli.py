"""The `labrecon` command: serve MCP, check the installation, talk to a running daemon."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from supervisor.config import ConfigError, Settings, config_path, load_settings
from supervisor.config_sources import ConfigValue
from supervisor.version import VERSION
from transports.exits import EXIT_CONFIG, EXIT_ESCALATED, EXIT_FAILED, EXIT_OK
from transports.ops import commands as ops_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"labrecon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labrecon",
        description="Lab-only nmap, masscan and gobuster for MCP clients.",
    )
    parser.add_argument("--version", action="version", version=f"labrecon {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve MCP (stdio by default)")
    _config_option(serve)
    serve.add_argument(
        "--transport",
        choices=["stdio", "sse", "http"],
        default="stdio",
        help="how MCP clients connect; sse and http both start the HTTP daemon, which serves both",
    )
    serve.add_argument("--host", help="HTTP bind address (default: http.host); beyond loopback needs auth.token")
    serve.add_argument("--port", type=int, help="HTTP port (default: http.port; 0 picks a free one)")
    serve.add_argument("--ops-socket", metavar="PATH", help="also serve the ops endpoints on this Unix socket")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds running calls get to finish on shutdown")
    serve.set_defaults(handler=cmd_serve)

    check = sub.add_parser("check", help="show the tools found, their versions, the policy, limits and scan store")
    _config_option(check)
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument(
        "--show-config",
        action="store_true",
        help="print the effective configuration instead: every key, its value and its source; secrets redacted",
    )
    check.set_defaults(handler=cmd_check)

    token = sub.add_parser("token", help="print a fresh random bearer token for auth.token")
    token.set_defaults(handler=cmd_token)

    ops_commands.register(sub)  # status, faults, tools, scans: operating a running daemon
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML config file (default: $LABRECON_CONFIG)")


# --- serve -------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from supervisor.runtime import Runtime
    from transports import systemd
    from transports.logs import configure_logging
    from transports.ops.endpoints import serve_ops_socket
    from transports.reloads import follow_config
    from transports.stdio import serve_stdio

    http = args.transport in ("sse", "http")
    read_config = _config_reader(args, http=http)
    settings = read_config()
    configure_logging(settings.logging.level)
    source_name = str(where) if (where := config_path(args.config)) is not None else None
    if http:
        from transports.http.daemon import run_http_daemon

        return run_http_daemon(settings, grace=args.grace, source=read_config, source_name=source_name)
    runtime = Runtime.start(settings, owns_process=True, source=read_config, source_name=source_name)
    ops = None
    try:
        with follow_config(runtime) as reloads, systemd.watchdog(runtime.status):
            ops = serve_ops_socket(runtime, settings)

            def serving() -> None:
                systemd.ready("serving MCP on stdio")
                reloads.open()

            def stopping() -> None:
                reloads.close()
                systemd.stopping()

            serve_stdio(runtime, grace=args.grace, until=runtime.escalated, on_serving=serving, on_stopping=stopping)
    finally:
        if ops is not None:
            ops.stop()
        runtime.stop(args.grace)
    if runtime.escalated.is_set():
        print(f"labrecon: stopped after escalation: {runtime.escalation_reason}", file=sys.stderr)
        return EXIT_ESCALATED
    return EXIT_OK


def _config_reader(args: argparse.Namespace, *, http: bool) -> Callable[[], Settings]:
    """The daemon's config as its file says, with the command line's overrides: read at start and at each reload.

    Re-applying `--host`, `--port` and `--ops-socket` on every read keeps them in force across reloads.
    """

    def read() -> Settings:
        settings = load_settings(args.config)
        host, port = (args.host, args.port) if http else (None, None)
        if host is None and port is None and args.ops_socket is None:
            return settings
        from transports.http.daemon import with_http_options

        return with_http_options(settings, host=host, port=port, ops_socket=args.ops_socket)

    return read


# --- token -------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from transports.http.security import new_token

    print(new_token())
    return EXIT_OK


# --- check -------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from actors.probe import probe_binary
    from actors.tools import TOOL_SPECS
    from supervisor.health import installation_problems, version_queries

    if args.show_config:
        return show_config(args)
    settings = load_settings(args.config)
    queries = version_queries(settings, TOOL_SPECS)
    problems = installation_problems(settings, TOOL_SPECS)
    probes = {name: {**probe_binary(*query), "problems": list(problems[name])} for name, query in queries.items()}
    report = check_report(settings, probes)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_check(report))
    usable = [t for t in report["tools"].values() if t["enabled"] and t["found"]]
    return EXIT_OK if usable else EXIT_FAILED


def check_report(settings: Settings, probes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tools = {}
    for name, tool in settings.tools.items():
        probe = probes.get(name, {})
        limits = tool.model_dump(mode="json", exclude={"binary", "enabled", "breaker"})
        tools[name] = {
            "enabled": tool.enabled,
            "binary": tool.binary,
            "path": probe.get("path"),
            "found": bool(probe.get("found") and probe.get("executable", False)),
            "version": probe.get("version"),
            "problems": probe.get("problems", []),
            "limits": limits,
            "breaker": tool.breaker.model_dump(mode="json"),
        }
    policy = settings.policy.model_dump(mode="json")
    scans = settings.scans.model_dump(mode="json")
    return {"version": VERSION, "config_digest": settings.digest(), "policy": policy, "tools": tools, "scans": scans}


def render_check(report: dict[str, Any]) -> str:
    policy = report["policy"]
    lines = [f"labrecon {report['version']}  (config {report['config_digest']})", "", "Tools"]
    for name, tool in report["tools"].items():
        if not tool["enabled"]:
            mark, where = "-", "disabled"
        elif tool["found"]:
            mark, where = "ok", f"{tool['path']}  {tool['version'] or ''}".rstrip()
        else:
            mark, where = "MISSING", f"{tool['binary']} not found or not executable"
        limits = tool["limits"]
        lines.append(f"  {name:<9} {mark:<8} {where}")
        lines += [f"  {'':<9} {'WARNING':<8} {problem}" for problem in tool["problems"]]
        lines.append(
            f"  {'':<9} {'':<8} concurrency {limits['concurrency']}, queue {limits['max_queue']}, "
            f"timeout {limits['timeout_sec']:g}s (max {limits['max_timeout_sec']:g}s)"
        )
    lines += ["", "Policy"]
    lines.append("  networks  " + ", ".join(policy["allowed_networks"]))
    lines.append("  domains   " + ", ".join(policy["allowed_domains"]))
    dns = (
        f"DNS on (each look-up within {policy['dns_timeout_sec']:g}s, {policy['dns_concurrency']} at once)"
        if policy["dns"]
        else "DNS off"
    )
    lines.append(f"  max hosts {policy['max_hosts']} per call; {dns}")
    if policy["hosts"]:
        lines.append("  static    " + ", ".join(f"{k}={v}" for k, v in policy["hosts"].items()))
    scans = report["scans"]
    lines += ["", "Scans"]
    lines.append(f"  store     {scans['path']}")
    lines.append(
        f"  a call waits {scans['inline_wait_sec']:g}s (at most {scans['max_wait_sec']:g}s asked), then answers "
        f"'working'; kept {scans['retention_days']:g} days, at most {scans['max_scans']}; "
        f"{scans['max_result_chars']} characters an answer"
    )
    return "\n".join(lines)


def show_config(args: argparse.Namespace) -> int:
    """`check --show-config`: the effective configuration, leaf by leaf, with where each value came from."""
    from supervisor.config_sources import config_values

    values = config_values(args.config)
    if args.json:
        print(json.dumps({value.key: {"value": value.value, "source": value.source} for value in values}, indent=2))
    else:
        print(render_config(values))
    return EXIT_OK


def render_config(values: Sequence[ConfigValue]) -> str:
    """Aligned columns: the key, its value (TOML-like; a secret as the bare marker), its source."""
    shown = [(v.key, v.value if v.secret else json.dumps(v.value, ensure_ascii=False), v.source) for v in values]
    rows = [("KEY", "VALUE", "SOURCE"), *shown]
    key_width = max(len(key) for key, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), _VALUE_COLUMN)
    return "\n".join(f"{key:<{key_width}}  {value:<{value_width}}  {source}".rstrip() for key, value, source in rows)


_VALUE_COLUMN = 40
"""The widest the value column is padded to; a longer value pushes its source to the right."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
