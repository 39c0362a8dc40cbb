"""`labrecon status`, `reload`, `faults …`, `tools …` and `scans …`: operating a running daemon.

These are clients of the ops endpoints, never of the runtime, so they work against a daemon started
any way. Exit codes: 0 done (`status`: ready); 1 the daemon answered with an error (an unknown scan,
a config the reload refused, say), is not ready, or a cancelled scan has not stopped yet; 2 usage or
config error; 4 the daemon could not be reached or refused the credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from supervisor.config import (
    AuthSettings,
    ConfigError,
    FaultSettings,
    HttpSettings,
    config_path,
    load_settings,
    read_toml,
)
from transports.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from transports.ops.client import OpsClient, OpsClientError, OpsRequestFailed
from transports.ops.status_view import (
    describe_fault,
    render_faults,
    render_reload,
    render_scan,
    render_scans,
    render_status,
    should_color,
)

__all__ = ["TOKEN_ENV", "client_from", "register"]

TOKEN_ENV = "LABRECON_AUTH__TOKEN"


FAULT_KINDS = get_args(FaultSettings.model_fields["kind"].annotation)
SCAN_STATUSES = ("working", "completed", "failed", "cancelled")
MAX_PAGE = 200  # what the daemon serves at most per page
SLOT_HELP = "tool name, e.g. nmap (on every scanner pool), or a tool on one pool, e.g. nmap@dmz"


def register(subparsers: Any) -> None:
    """Add `status`, `reload`, `faults`, `tools` and `scans` to the `labrecon` command's subparsers."""
    status = subparsers.add_parser("status", help="show a running daemon's tools, breakers, load and health")
    _connection_options(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=cmd_status)

    reload = subparsers.add_parser(
        "reload", help="have a running daemon re-read its config file and apply it (a refused one changes nothing)"
    )
    _connection_options(reload)
    reload.add_argument("--json", action="store_true", help="print what changed as JSON")
    reload.set_defaults(handler=cmd_reload)

    faults = subparsers.add_parser("faults", help="list, inject or clear faults in a running daemon")
    actions = faults.add_subparsers(dest="faults_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="show the fault rules")
    _connection_options(listing)
    listing.add_argument("--json", action="store_true", help="print the rules as JSON")
    listing.set_defaults(handler=cmd_faults_list)

    inject = actions.add_parser("inject", help="add a fault rule (same fields as [[faults]] in the config)")
    _connection_options(inject)
    inject.add_argument("--tool", required=True, help="the tool whose calls get the fault")
    inject.add_argument("--pool", metavar="NAME", help="only the tool's calls on this scanner pool")
    inject.add_argument("--kind", required=True, choices=FAULT_KINDS, help="what goes wrong")
    trigger = inject.add_mutually_exclusive_group()
    trigger.add_argument("--count", type=int, metavar="N", help="hit the next N calls")
    trigger.add_argument("--every", type=int, metavar="N", help="hit every Nth call")
    trigger.add_argument("--probability", type=float, metavar="P", help="hit each call with probability P")
    inject.add_argument("--seed", type=int, metavar="S", help="random seed for --probability (reproducible runs)")
    inject.add_argument("--delay-sec", type=float, metavar="SEC", help="for delay: how long")
    inject.add_argument("--flood-bytes", type=int, metavar="N", help="for flood: how much output")
    inject.add_argument("--json", action="store_true", help="print the new rule as JSON")
    inject.set_defaults(handler=cmd_faults_inject)

    clear = actions.add_parser("clear", help="remove fault rules (all, one by id, or one tool's)")
    _connection_options(clear)
    clear.add_argument("--id", type=int, dest="rule_id", metavar="N", help="only the rule with this id")
    clear.add_argument("--tool", help="only this tool's rules")
    clear.set_defaults(handler=cmd_faults_clear)

    tools = subparsers.add_parser(
        "tools", help="disable, enable, reset, restart or force the breaker of a tool in a running daemon"
    )
    tool_actions = tools.add_subparsers(dest="tools_action", metavar="ACTION", required=True)
    for action, text in (
        ("reset", "bring a tool that exceeded its restart limit back into service"),
        ("restart", "restart a tool's actor (running calls are answered actor_restarted)"),
    ):
        parser = tool_actions.add_parser(action, help=text)
        _connection_options(parser)
        parser.add_argument("name", help=SLOT_HELP)
        parser.set_defaults(handler=cmd_tools_control, action=action)
    breaker = tool_actions.add_parser("breaker", help="force a tool's circuit breaker open or closed")
    _connection_options(breaker)
    breaker.add_argument("name", help=SLOT_HELP)
    breaker.add_argument("state", choices=["open", "closed"])
    breaker.set_defaults(handler=cmd_tools_control, action="breaker")
    disable = tool_actions.add_parser(
        "disable", help="take a tool out of service: unlisted, new and queued calls refused, running ones finish"
    )
    _connection_options(disable)
    disable.add_argument("name", help="tool name, e.g. nmap")
    disable.add_argument("--reason", metavar="TEXT", help="what its callers are told, e.g. 'maintenance until 14:00'")
    disable.set_defaults(handler=cmd_tools_control, action="disable")
    enable = tool_actions.add_parser("enable", help="bring a tool an operator disabled back into service")
    _connection_options(enable)
    enable.add_argument("name", help="tool name, e.g. nmap")
    enable.set_defaults(handler=cmd_tools_control, action="enable")

    scans = subparsers.add_parser("scans", help="list, show or cancel the scans of a running daemon")
    scan_actions = scans.add_subparsers(dest="scans_action", metavar="ACTION", required=True)
    listing = scan_actions.add_parser("list", help="show scans, newest first")
    _connection_options(listing)
    listing.add_argument("--tool", help="only this tool's scans")
    listing.add_argument("--status", choices=SCAN_STATUSES, help="only scans in this status")
    listing.add_argument("--owner", help="only this owner's scans")
    listing.add_argument(
        "--limit", type=_page_size, default=50, metavar="N", help=f"scans per page, 1 to {MAX_PAGE} (default 50)"
    )
    listing.add_argument("--all-pages", action="store_true", help="follow every page, not just the first")
    listing.add_argument("--json", action="store_true", help="print the scans as JSON")
    listing.set_defaults(handler=cmd_scans_list)
    for action, text, handler in (
        ("show", "show one scan: its record and how it ended", cmd_scans_show),
        ("cancel", "cancel a running scan (its processes are ended) and show where it ended", cmd_scans_cancel),
    ):
        parser = scan_actions.add_parser(action, help=text)
        _connection_options(parser)
        parser.add_argument("scan_id", metavar="ID", help="the scan's id (scans list shows it)")
        parser.add_argument("--json", action="store_true", help="print the scan as JSON")
        parser.set_defaults(handler=handler)


def _page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE}")
    return size


def _connection_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="the daemon's HTTP address, e.g. http://127.0.0.1:8765")
    where.add_argument("--socket", metavar="PATH", help="the daemon's ops Unix socket")
    parser.add_argument("--token", help=f"bearer token (prefer ${TOKEN_ENV}: a command line is visible to others)")
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="find the daemon from this config (default: $LABRECON_CONFIG)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SEC", help="how long to wait for an answer")


def client_from(args: argparse.Namespace, *, lenient: bool = False) -> OpsClient:
    """Where and how to connect: the flags first, then the environment, then the daemon's config.

    The place is `--url` or `--socket`, else the config's `http.ops_socket`, else its host and port;
    the token `--token`, else `LABRECON_AUTH__TOKEN` (better: a command line is visible to every
    user on the machine), else the config's `auth.token` or first admin `[[auth.tokens]]` entry.
    `lenient` (for `reload`): a config that does not validate is still read for `[http]` and `[auth]`,
    so the daemon, which judges the file, can be reached and say why it refuses it.
    """
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.url:
        return OpsClient(url=args.url, token=token, timeout=args.timeout)
    if args.socket:
        return OpsClient(socket_path=args.socket, token=token, timeout=args.timeout)
    try:
        settings = load_settings(args.config)
        http, auth = settings.http, settings.auth
    except ConfigError:
        if not lenient:
            raise
        http, auth = _where_the_daemon_is(args.config)
    if token is None and (configured := auth.admin_token()) is not None:
        token = configured.get_secret_value()
    if http.ops_socket is not None:
        return OpsClient(socket_path=http.ops_socket, token=token, timeout=args.timeout)
    if http.port == 0:
        raise OpsClientError("the config sets http.port = 0 (any free port); give the daemon's --url")
    host = http.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # a daemon listening everywhere listens here too
    if ":" in host:
        host = f"[{host}]"
    return OpsClient(url=f"http://{host}:{http.port}", token=token, timeout=args.timeout)


def _where_the_daemon_is(path: str | None) -> tuple[HttpSettings, AuthSettings]:
    """`[http]` and `[auth]` of a config file that does not validate as a whole; raises if they do not either."""
    where = config_path(path)
    raw = read_toml(Path(where)) if where is not None else {}
    try:
        return HttpSettings.model_validate(raw.get("http", {})), AuthSettings.model_validate(raw.get("auth", {}))
    except ValidationError:
        problem = f"config file {where} is invalid, [http] or [auth] included: the daemon cannot be found from it"
        raise ConfigError(problem) from None


# --- commands ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        if args.json:
            raw = client.request("GET", "/status")
            print(json.dumps(raw, indent=2))  # as served, including fields this client does not know yet
            ready = isinstance(raw, dict) and isinstance(raw.get("health"), dict) and raw["health"].get("ready") is True
        else:
            status = client.status()
            print(render_status(status, color=should_color(sys.stdout)))
            ready = status.health.ready
        return EXIT_OK if ready else EXIT_FAILED

    return _talk(args, run)


def cmd_faults_list(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        rules = client.faults()
        print(json.dumps(rules, indent=2) if args.json else render_faults(rules, color=should_color(sys.stdout)))
        return EXIT_OK

    return _talk(args, run)


def cmd_faults_inject(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        answer = client.inject(
            tool=args.tool,
            pool=args.pool,
            kind=args.kind,
            count=args.count,
            every=args.every,
            probability=args.probability,
            seed=args.seed,
            delay_sec=args.delay_sec,
            flood_bytes=args.flood_bytes,
        )
        rule = answer.get("fault") or {"id": answer.get("id")}
        print(json.dumps(rule, indent=2) if args.json else f"added {describe_fault(rule)}")
        return EXIT_OK

    return _talk(args, run)


def cmd_faults_clear(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        cleared = client.clear_faults(args.rule_id, tool=args.tool)
        print(f"cleared {cleared} fault rule{'' if cleared == 1 else 's'}")
        return EXIT_OK

    return _talk(args, run)


def cmd_reload(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        attempt = client.reload()
        print(attempt.model_dump_json(indent=2) if args.json else render_reload(attempt))
        return EXIT_OK

    return _talk(args, run)


def cmd_tools_control(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        body: dict[str, Any] | None = None
        if args.action == "breaker":
            body = {"state": args.state}
        elif args.action == "disable" and args.reason:
            body = {"reason": args.reason}
        print(client.control(args.name, args.action, body))
        return EXIT_OK

    return _talk(args, run)


def cmd_scans_list(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        query = {"tool": args.tool, "status": args.status, "owner": args.owner, "limit": args.limit}
        page = client.scans(**query)
        records = list(page["scans"])
        while args.all_pages and page.get("next_cursor"):
            page = client.scans(**query, cursor=page["next_cursor"])
            records += page["scans"]
        more = page.get("next_cursor")
        if args.json:
            print(json.dumps({"scans": records, "next_cursor": more}, indent=2))
        else:
            print(render_scans(records, color=should_color(sys.stdout)))
            if more:
                print(f"labrecon: more scans than these {len(records)}; --all-pages lists them all", file=sys.stderr)
        return EXIT_OK

    return _talk(args, run)


def cmd_scans_show(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        scan = client.scan(args.scan_id)
        print(json.dumps(scan, indent=2) if args.json else render_scan(scan, color=should_color(sys.stdout)))
        return EXIT_OK

    return _talk(args, run)


def cmd_scans_cancel(args: argparse.Namespace) -> int:
    def run(client: OpsClient) -> int:
        scan = client.cancel_scan(args.scan_id)
        stopped = scan.get("status") != "working"
        if args.json:
            print(json.dumps(scan, indent=2))
        elif not scan.get("cancel_requested") and not stopped:
            print(f"scan {scan['scan_id']} is running in another labrecon process sharing the store; cancel it there")
        elif not scan.get("cancel_requested"):
            print(f"scan {scan['scan_id']} had already finished: {scan.get('status')}")
        elif scan.get("status") == "cancelled":
            print(f"scan {scan['scan_id']} cancelled")
        elif stopped:
            print(f"scan {scan['scan_id']} ended {scan.get('status')} before the cancel reached it")
        else:
            print(f"scan {scan['scan_id']} was asked to stop and is still stopping")
        return EXIT_OK if stopped else EXIT_FAILED

    return _talk(args, run)


def _talk(args: argparse.Namespace, run: Any) -> int:
    """Run one exchange with the daemon; every failure becomes one line on stderr and an exit code."""
    reloading = args.handler is cmd_reload
    try:
        client = client_from(args, lenient=reloading)
    except (ValueError, OpsClientError) as exc:  # a bad --url, or a config that does not load
        print(f"labrecon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return int(run(client))
    except OpsRequestFailed as exc:
        print(f"labrecon: {exc} ({exc.status} {exc.error})", file=sys.stderr)
        if reloading and exc.status == 401 and not (args.token or os.environ.get(TOKEN_ENV)):
            print(
                "labrecon: the daemon still holds the token in force before this reload; pass that one "
                f"(--token or ${TOKEN_ENV}), or send the daemon SIGHUP (systemctl reload labrecon)",
                file=sys.stderr,
            )
        return EXIT_UNREACHABLE if exc.refused else EXIT_FAILED
    except OpsClientError as exc:
        print(f"labrecon: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
