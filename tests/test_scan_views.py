"""Summaries and pages of scan results: within the budget, and every row exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from actors.results import CallOutcome, ErrorType
from actors.tools import TOOL_SPECS
from actors.tools.nmap import NmapHost, NmapPort, NmapResult, NmapScript
from supervisor.scans.views import (
    MAX_LIMIT,
    MIN_MAX_CHARS,
    PAGE_SCHEMA,
    SUMMARY_SCHEMA,
    View,
    result_page,
    summarize,
)
from tests.test_parsers import GOBUSTER_DIR, GOBUSTER_VHOST, MASSCAN_NEW, NMAP_XML

BUDGET = 20_000  # the configured default
PAGE = Draft202012Validator(PAGE_SCHEMA)
SUMMARY = Draft202012Validator(SUMMARY_SCHEMA)
PROPERTY = settings(max_examples=60, deadline=None)


def nmap_xml(hosts: int, ports: int) -> bytes:
    """An `nmap -sV` document: `hosts` hosts up with `ports` open ports each, every fifth with a script."""
    parts = ['<?xml version="1.0"?><nmaprun scanner="nmap" args="nmap -sV" start="1" version="7.93">']
    for h in range(hosts):
        address = f"10.0.{h // 256}.{h % 256}"
        parts.append(f'<host><status state="up" reason="syn-ack"/><address addr="{address}" addrtype="ipv4"/><ports>')
        for p in range(ports):
            number = 20 + 37 * p
            script = f'<script id="banner" output="hello from {address}:{number}"/>' if p % 5 == 0 else ""
            parts.append(
                f'<port protocol="tcp" portid="{number}"><state state="open" reason="syn-ack"/>'
                f'<service name="svc{p}" product="Product {p}" version="1.{p}"/>{script}</port>'
            )
        parts.append("</ports></host>")
    parts.append(
        f'<runstats><finished time="2" elapsed="12.5" exit="success"/><hosts up="{hosts}" down="0" total="{hosts}"/>'
        "</runstats></nmaprun>"
    )
    return "".join(parts).encode()


def outcome(tool: str, result: dict[str, Any] | None, **fields: Any) -> CallOutcome:
    fields = {"ok": True, "target": "10.0.0.0/24", "returncode": 0, **fields}
    return CallOutcome(tool=tool, call_id="c1", result=result, **fields)


def parsed(tool: str, data: bytes, truncated: bool = False, **fields: Any) -> CallOutcome:
    return outcome(tool, TOOL_SPECS[tool].parse(data, truncated=truncated), **fields)


@pytest.fixture(scope="module")
def big_scan() -> CallOutcome:
    return parsed("nmap", nmap_xml(256, 20))


def pages(scan: CallOutcome, *, offset: int = 0, **query: Any) -> list[View]:
    """Every page from `offset` on, following next_offset; each checked against the budget and the schema."""
    max_chars = query.setdefault("max_chars", BUDGET)
    limit = query.get("limit", 100)
    views: list[View] = []
    while True:
        view = result_page(scan, offset=offset, **query)
        assert view.size <= max_chars and len(view.text) <= max_chars
        assert PAGE.is_valid(view.structured), next(PAGE.iter_errors(view.structured))
        assert view.structured["next_offset"] == view.next_offset and view.structured["total"] == view.total
        views.append(view)
        if view.next_offset is None:
            return views
        assert 1 <= len(view.structured["rows"]) <= limit
        assert view.next_offset == offset + len(view.structured["rows"])
        offset = view.next_offset


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    return [(row["host"], row.get("port")) for row in rows]


def page_keys(views: list[View]) -> list[tuple[str, int | None]]:
    return [key for view in views for key in keys(view.structured["rows"])]


# ---------------------------------------------------------------- a /24 with 20 ports per host


def test_a_summary_of_256_hosts_with_20_ports_each_fits_the_budget_and_says_how_much_more(big_scan):
    view = summarize(big_scan, max_chars=BUDGET)
    assert view.size <= BUDGET
    assert SUMMARY.is_valid(view.structured), next(SUMMARY.iter_errors(view.structured))
    shown = len(view.structured["rows"])
    assert 40 <= shown < 5120
    assert view.total == 5120 and view.next_offset == shown
    assert view.structured["continue_with"] == {"state": "open", "offset": shown}
    assert view.structured["counts"] == {
        "hosts": 256,
        "hosts_up": 256,
        "hosts_scanned": 256,
        "open_ports": 5120,
        "ports": 5120,
    }
    assert view.text.startswith("nmap 10.0.0.0/24 finished in 0.0s, exit 0: 256 of 256 hosts up, 5120 open ports")
    assert (
        f'Open ports (showing {shown} of 5120; for the rest call scan_result with state="open" and offset={shown})'
        in (view.text)
    )
    assert "10.0.0.0\n  20/tcp svc0 Product 0 1.0\n  57/tcp svc1 Product 1 1.1" in view.text
    findings = view.structured["findings"]
    assert 0 < len(findings) < view.structured["findings_total"] == 1024
    assert findings[0] == {"host": "10.0.0.0", "port": 20, "protocol": "tcp", "kind": "script", "name": "banner"} | {
        "text": "hello from 10.0.0.0:20"
    }
    assert f"Findings (showing {len(findings)} of 1024;" in view.text


def test_the_summary_and_the_pages_after_it_give_every_open_port_once(big_scan):
    summary = summarize(big_scan, max_chars=BUDGET)
    following = pages(big_scan, **summary.structured["continue_with"])
    assert keys(summary.structured["rows"]) + page_keys(following) == [
        (f"10.0.{h // 256}.{h % 256}", 20 + 37 * p) for h in range(256) for p in range(20)
    ]
    assert following[0].text.startswith(f"nmap 10.0.0.0/24: rows {summary.next_offset + 1}-")
    assert "For more call scan_result with offset=" in following[0].text
    assert "this is the last page" in following[-1].text


@pytest.mark.parametrize("limit, max_chars", [(100, BUDGET), (MAX_LIMIT, 2 * BUDGET)])
def test_paging_through_a_big_scan_returns_every_port_once(big_scan, limit, max_chars):
    views = pages(big_scan, limit=limit, max_chars=max_chars)
    assert page_keys(views) == [(f"10.0.0.{h}", 20 + 37 * p) for h in range(256) for p in range(20)]
    assert len(views) > 5120 // limit  # the budget, not only the limit, ends pages


# ---------------------------------------------------------------- any result, any limit, any budget

AWKWARD = st.one_of(
    st.text(max_size=40),
    st.builds(lambda piece, n: piece * n, st.sampled_from(['"', "\\", "\x01", "é", "a\n", "x"]), st.integers(0, 3000)),
)
SCRIPTS = st.lists(st.builds(NmapScript, id=st.text(min_size=1, max_size=20), output=AWKWARD), max_size=4)
PORTS = st.lists(
    st.builds(
        NmapPort,
        port=st.integers(0, 65535),
        protocol=st.sampled_from(["tcp", "udp"]),
        state=st.sampled_from(["open", "closed", "filtered", "open|filtered"]),
        service=st.none() | st.text(max_size=12) | st.sampled_from(["ssh", "Svc 0", "http"]),
        product=st.none() | AWKWARD,
        version=st.none() | st.text(max_size=12),
        scripts=SCRIPTS,
    ),
    max_size=8,
    unique_by=lambda port: (port.port, port.protocol),
)


@st.composite
def nmap_results(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 12))
    hosts = [
        NmapHost(
            address=f"10.0.0.{index}",
            status=draw(st.sampled_from(["up", "down"])),
            hostnames=draw(st.lists(AWKWARD.filter(bool), max_size=3)),
            ports=draw(PORTS),
            os_matches=draw(st.lists(AWKWARD.filter(bool), max_size=2)),
            scripts=draw(SCRIPTS),
        )
        for index in range(count)
    ]
    return NmapResult(hosts=hosts, truncated=draw(st.booleans()), parse_error=draw(st.none() | AWKWARD)).model_dump()


def expected_rows(result: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Per host: its own row when it has no ports, OS guesses or host scripts; then one per port."""
    rows: list[tuple[str, int | None]] = []
    for host in result["hosts"]:
        if not host["ports"] or host["os_matches"] or host["scripts"]:
            rows.append((host["address"], None))
        rows += [(host["address"], port["port"]) for port in host["ports"]]
    return rows


@PROPERTY
@given(nmap_results(), st.integers(1, 60), st.integers(MIN_MAX_CHARS, 3 * MIN_MAX_CHARS))
def test_paging_returns_every_row_exactly_once_whatever_the_limit_and_budget(result, limit, max_chars):
    scan = outcome("nmap", result)
    views = pages(scan, limit=limit, max_chars=max_chars)
    assert page_keys(views) == expected_rows(result)


@PROPERTY
@given(
    nmap_results(),
    st.none() | st.lists(st.sampled_from([f"10.0.0.{n}" for n in range(12)] + ["10.0.0.0/29"]), max_size=3),
    st.none() | st.lists(st.integers(0, 65535), max_size=3),
    st.none() | st.sampled_from(["open", "CLOSED", "open|filtered", "up", "down"]),
    st.none() | st.text(alphabet=" sSvc0", max_size=2),
    st.integers(1, 60),
)
def test_filtered_pages_hold_exactly_the_rows_that_match(result, hosts, ports, state, service, limit):
    def wanted(address: str, port: dict[str, Any] | None, status: str) -> bool:
        inside = address in (hosts or ()) or ("10.0.0.0/29" in (hosts or ()) and int(address.split(".")[-1]) < 8)
        row_state = port["state"] if port else status
        row_service = (port or {}).get("service")
        return (
            (not hosts or inside)
            and (not ports or (port is not None and port["port"] in ports))
            and (not state or row_state == state.lower())
            and (not service or (row_service is not None and service.lower() in row_service.lower()))
        )

    expected = []
    for host in result["hosts"]:
        if (not host["ports"] or host["os_matches"] or host["scripts"]) and wanted(
            host["address"], None, host["status"]
        ):
            expected.append((host["address"], None))
        expected += [(host["address"], p["port"]) for p in host["ports"] if wanted(host["address"], p, "")]
    scan = outcome("nmap", result)
    query = {"hosts": hosts, "ports": ports, "state": state, "service": service}
    assert page_keys(pages(scan, limit=limit, **query)) == expected


ERRORS = st.builds(
    lambda kind, message, retry: CallOutcome.failure("nmap", "c2", kind, message, retry_after_sec=retry),
    st.sampled_from(list(ErrorType)),
    AWKWARD,
    st.none() | st.floats(0, 1e6),
)


@PROPERTY
@given(
    nmap_results(),
    st.one_of(st.none(), ERRORS.map(lambda failed: failed.error)),
    st.booleans(),
    AWKWARD,
    st.integers(MIN_MAX_CHARS, 3 * MIN_MAX_CHARS),
)
def test_any_summary_and_first_page_stay_within_the_budget(result, error, cut, target, max_chars):
    result["error"] = target or None  # nmap's own error message
    scan = outcome("nmap", result, ok=error is None, error=error, stdout_truncated=cut, target=target[:200])
    view = summarize(scan, max_chars=max_chars)
    assert view.size <= max_chars
    assert SUMMARY.is_valid(view.structured), next(SUMMARY.iter_errors(view.structured))
    open_ports = [(h["address"], p["port"]) for h in result["hosts"] for p in h["ports"] if p["state"] == "open"]
    assert keys(view.structured["rows"]) == open_ports[: len(view.structured["rows"])]
    assert view.total == len(open_ports)
    first = result_page(scan, max_chars=max_chars)
    assert first.size <= max_chars
    assert PAGE.is_valid(first.structured)


# ---------------------------------------------------------------- filters, per tool


def page_of(scan: CallOutcome, **filters: Any) -> list[tuple[str, int | None]]:
    (view,) = pages(scan, **filters)
    return keys(view.structured["rows"])


def test_nmap_rows_filter_by_host_name_network_port_state_and_service():
    scan = parsed("nmap", NMAP_XML)
    host_row, ssh, http, https = ("10.0.0.1", None), ("10.0.0.1", 22), ("10.0.0.1", 80), ("10.0.0.2", 443)
    assert page_of(scan) == [host_row, ssh, http, https]
    assert page_of(scan, hosts=["GW.lab.internal"]) == [host_row, ssh, http]
    assert page_of(scan, hosts=["10.0.0.2/31"]) == [https]
    assert page_of(scan, hosts=["10.0.0.0/30"], ports=[22, 443]) == [ssh, https]
    assert page_of(scan, state="filtered") == [https]
    assert page_of(scan, state="Open") == [ssh, http]
    assert page_of(scan, state="up") == [host_row]
    assert page_of(scan, service="HTTP") == [http, https]
    assert page_of(scan, service="http", state="open", hosts=["10.0.0.1"]) == [http]
    assert page_of(scan, hosts=["10.9.9.9"]) == []
    (view,) = pages(scan, service="ftp")
    assert view.structured["total"] == 0 and view.structured["unfiltered_total"] == 4
    assert view.text == "nmap 10.0.0.0/24: no rows matching the filters (4 rows in all)."


def test_nmap_rows_carry_service_versions_scripts_and_os_guesses():
    (view,) = pages(parsed("nmap", NMAP_XML))
    host, ssh = view.structured["rows"][:2]
    assert host == {
        "host": "10.0.0.1",
        "hostnames": ["gw.lab.internal"],
        "status": "up",
        "os_matches": ["Linux 5.0 - 5.14"],
        "scripts": [{"id": "smb-os-discovery", "output": "OS: Linux"}],
    }
    assert ssh["product"] == "OpenSSH" and ssh["version"] == "9.2p1 Debian 2+deb12u1"
    assert ssh["scripts"] == [{"id": "ssh-hostkey", "output": "\n  256 aa:bb (ECDSA)\n  256 cc:dd (ED25519)"}]
    assert view.text.splitlines() == [
        "nmap 10.0.0.0/24: rows 1-4 of 4; this is the last page.",
        "10.0.0.1 (gw.lab.internal) up; OS: Linux 5.0 - 5.14",
        "  smb-os-discovery: OS: Linux",
        "10.0.0.1 (gw.lab.internal) 22/tcp open ssh OpenSSH 9.2p1 Debian 2+deb12u1 (protocol 2.0)",
        "  ssh-hostkey: 256 aa:bb (ECDSA) | 256 cc:dd (ED25519)",
        "10.0.0.1 (gw.lab.internal) 80/tcp open http nginx 1.22.1",
        "  http-title: Lab portal",
        "10.0.0.2 443/tcp filtered https",
    ]


def test_masscan_rows_take_their_service_from_banners():
    scan = parsed("masscan", MASSCAN_NEW)
    assert page_of(scan) == [("10.0.0.5", 22), ("10.0.0.5", 80), ("10.0.0.9", 53)]
    assert page_of(scan, service="http") == [("10.0.0.5", 80)]
    assert page_of(scan, ports=[53], state="open") == [("10.0.0.9", 53)]
    summary = summarize(scan, max_chars=BUDGET)
    assert summary.structured["counts"]["open_ports"] == 3
    assert "10.0.0.5 80/tcp http: HTTP/1.1 200 OK | Server: nginx" in summary.text
    assert summary.structured["findings"][1] == {
        "host": "10.0.0.5",
        "port": 80,
        "protocol": "tcp",
        "kind": "banner",
        "name": "title",
        "text": "Lab portal",
    }


def test_gobuster_rows_are_found_paths_filtered_by_status_or_status_class():
    scan = parsed("gobuster", GOBUSTER_DIR, target="10.0.0.5", resolved_targets=["10.0.0.5"])

    def paths(**filters: Any) -> list[str]:
        (view,) = pages(scan, **filters)
        return [row["path"] for row in view.structured["rows"]]

    assert len(paths()) == 7
    assert paths(state="403") == ["/.htaccess", "/server-status"]
    assert paths(state="3xx") == ["/admin"]
    assert paths(hosts=["10.0.0.5"]) == paths()
    assert paths(hosts=["10.0.0.6"]) == [] == paths(ports=[80]) == paths(service="http")
    summary = summarize(scan, max_chars=BUDGET)
    assert summary.structured["rows"][1] == {"path": "/admin", "status": 301, "size": 0, "redirect": "/admin/"}
    assert summary.structured["rows_filter"] == {} and summary.structured["counts"] == {"found": 7}
    assert summary.text.splitlines()[:3] == [
        "gobuster 10.0.0.5 finished in 0.0s, exit 0: 7 paths found.",
        "Found (all 7):",
        "/.htaccess 403 [size 277]",
    ]


def test_gobuster_vhost_rows_filter_by_the_host_found():
    scan = parsed("gobuster", GOBUSTER_VHOST)
    (view,) = pages(scan, hosts=["old.lab.internal"])
    assert view.structured["rows"] == [
        {"host": "old.lab.internal", "status": 302, "size": 0} | {"redirect": "https://new.lab.internal/"}
    ]
    assert "4 virtual hosts found" in summarize(scan, max_chars=BUDGET).text


def test_a_ping_scan_summary_lists_the_hosts_up():
    result = NmapResult(hosts=[NmapHost(address=f"10.0.0.{n}", status="up") for n in range(1, 41)], hosts_up=40)
    scan = outcome("nmap", result.model_dump())
    summary = summarize(scan, max_chars=MIN_MAX_CHARS)
    assert summary.structured["rows"] == [] and summary.next_offset is None
    assert summary.structured["quiet_hosts"] == [f"10.0.0.{n}" for n in range(1, 41)]
    assert "Hosts up without open ports (all 40): 10.0.0.1, 10.0.0.2," in summary.text
    assert page_of(scan, state="up", limit=MAX_LIMIT) == [(f"10.0.0.{n}", None) for n in range(1, 41)]


# ---------------------------------------------------------------- failed, cut short, odd


def test_a_failed_scan_summarises_its_error_and_has_no_rows():
    failed = CallOutcome.failure("nmap", "c9", ErrorType.CIRCUIT_OPEN, "nmap failed 5 times", retry_after_sec=30.0)
    view = summarize(failed, max_chars=MIN_MAX_CHARS)
    assert SUMMARY.is_valid(view.structured)
    assert view.text == (
        "nmap failed (circuit_open): nmap failed 5 times. Retry after 30s. Next step: The tool failed "
        "repeatedly and is paused; retry after the suggested delay."
    )
    assert view.structured["error"] == {
        "error_type": "circuit_open",
        "message": "nmap failed 5 times",
        "recovery_suggestion": failed.error.recovery_suggestion,
        "retry_after_sec": 30.0,
    }
    assert view.structured["ok"] is False and view.structured["error_type"] == "circuit_open"
    assert view.structured["rows"] == [] and view.next_offset is None and view.total == 0
    (page,) = pages(failed)
    assert page.text == "nmap: the result has no rows."


def test_a_timed_out_scan_shows_what_it_found_before_and_says_the_result_is_partial():
    cut = NMAP_XML[: NMAP_XML.index(b'<port protocol="tcp" portid="443">')]
    result = TOOL_SPECS["nmap"].parse(cut, truncated=True)
    scan = CallOutcome.failure(
        "nmap", "c3", ErrorType.TIMEOUT, "nmap did not finish within 60s", target="10.0.0.0/30", timed_out=True
    ).model_copy(update={"result": result})
    view = summarize(scan, max_chars=BUDGET)
    lines = view.text.splitlines()
    assert lines[0].startswith("nmap 10.0.0.0/30 failed (timeout): nmap did not finish within 60s. Next step: ")
    assert lines[0].endswith("What it found before: 2 hosts up, 2 open ports, 4 findings.")
    assert lines[1] == "Note: the scan timed out; the result holds what it found before"
    assert lines[2].startswith("Note: the output was not fully read: XML ended early")
    assert view.structured["truncated_output"] is True
    assert keys(view.structured["rows"]) == [("10.0.0.1", 22), ("10.0.0.1", 80)]


def test_output_cut_at_the_byte_cap_says_so_in_the_summary_and_in_every_page():
    cut = NMAP_XML[: NMAP_XML.index(b'<service name="http"')]
    scan = parsed("nmap", cut, truncated=True, stdout_truncated=True)
    note = "output hit the byte cap; the result is partial; narrow the scan for complete results"
    summary = summarize(scan, max_chars=BUDGET)
    assert summary.structured["truncated_output"] is True
    assert summary.structured["notes"][0] == note and f"\nNote: {note}\n" in summary.text
    (page,) = pages(scan)
    assert page.structured["truncated_output"] is True and page.structured["notes"][0] == note
    assert page.text.splitlines()[1] == f"Note: {note}"


def test_a_result_without_rows_says_so():
    scan = outcome("hello", {"greetings": ["hello 10.0.0.5"], "truncated": False, "parse_error": None})
    view = summarize(scan, max_chars=MIN_MAX_CHARS)
    assert (
        view.text == "hello 10.0.0.0/24 finished in 0.0s, exit 0: no hosts or findings to list; read the full result."
    )
    assert SUMMARY.is_valid(view.structured) and view.total == 0
    nothing = summarize(parsed("gobuster", b""), max_chars=MIN_MAX_CHARS)
    assert nothing.text == "gobuster 10.0.0.0/24 finished in 0.0s, exit 0: nothing found."
    unparsed = summarize(outcome("nmap", None), max_chars=MIN_MAX_CHARS)
    assert "Note: the tool's output was not parsed" in unparsed.text


def test_a_huge_row_is_clipped_to_fit_a_page_and_says_so():
    port = NmapPort(port=80, protocol="tcp", state="open", scripts=[NmapScript(id="http-title", output="x" * 100_000)])
    host = NmapHost(
        address="10.0.0.1", status="up", hostnames=[f"h{n}.lab.internal" for n in range(1000)], ports=[port]
    )
    scan = outcome("nmap", NmapResult(hosts=[host]).model_dump())
    (view,) = pages(scan, max_chars=MIN_MAX_CHARS)
    (row,) = view.structured["rows"]
    assert row["clipped"] is True and row["port"] == 80 and len(row["scripts"][0]["output"]) < 1000
    assert "[clipped]" in view.text


def test_an_offset_past_the_end_gives_an_empty_last_page():
    (view,) = pages(parsed("masscan", MASSCAN_NEW), offset=3)
    assert view.structured["rows"] == [] and view.next_offset is None and view.total == 3
    assert view.text == "masscan 10.0.0.0/24: offset 3 is past the last row; there are 3 rows."


@pytest.mark.parametrize(
    "query, message",
    [
        ({"max_chars": MIN_MAX_CHARS - 1}, "max_chars must be at least"),
        ({"offset": -1}, "offset must be 0 or more"),
        ({"limit": 0}, "limit must be between 1 and"),
        ({"limit": MAX_LIMIT + 1}, "limit must be between 1 and"),
    ],
)
def test_bad_paging_arguments_are_refused(query, message):
    with pytest.raises(ValueError, match=message):
        result_page(parsed("masscan", MASSCAN_NEW), **{"max_chars": BUDGET, **query})
    if "max_chars" in query:
        with pytest.raises(ValueError, match=message):
            summarize(parsed("masscan", MASSCAN_NEW), max_chars=query["max_chars"])


@pytest.mark.parametrize("schema", [PAGE_SCHEMA, SUMMARY_SCHEMA])
def test_the_view_schemas_are_valid_json_schemas(schema):
    Draft202012Validator.check_schema(schema)
