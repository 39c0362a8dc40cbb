"""Parsers for nmap XML, masscan JSON and gobuster lines, on recorded-style samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.tools import TOOL_SPECS

NMAP = TOOL_SPECS["nmap"]
MASSCAN = TOOL_SPECS["masscan"]
GOBUSTER = TOOL_SPECS["gobuster"]

SAMPLES = Path(__file__).parent / "samples"
NMAP_XML = (SAMPLES / "nmap_full.xml").read_bytes()
MASSCAN_NEW = (SAMPLES / "masscan_new.json").read_bytes()  # masscan 1.3: leading-comma records
MASSCAN_OLD = (SAMPLES / "masscan_old.json").read_bytes()  # masscan 1.0: trailing commas, {finished: 1}
GOBUSTER_DIR = (SAMPLES / "gobuster_dir.txt").read_bytes()  # gobuster 3.x dir, plus noise lines
GOBUSTER_VHOST = (SAMPLES / "gobuster_vhost.txt").read_bytes()  # 3.5 style, coloured, and older style


# ---------------------------------------------------------------- nmap


def test_nmap_complete_document():
    result = NMAP.parse(NMAP_XML, truncated=False)
    assert result["complete"] is True
    assert result["truncated"] is False
    assert result["parse_error"] is None
    assert (result["hosts_up"], result["hosts_down"], result["hosts_total"]) == (2, 2, 4)
    assert result["elapsed_sec"] == pytest.approx(10.42)
    gw, second = result["hosts"]  # the <hosthint> is not a host
    assert gw["address"] == "10.0.0.1"
    assert gw["mac"] == "52:54:00:12:34:56"
    assert gw["status"] == "up"
    assert gw["hostnames"] == ["gw.lab.internal"]
    assert gw["os_matches"] == ["Linux 5.0 - 5.14"]
    assert gw["scripts"] == [{"id": "smb-os-discovery", "output": "OS: Linux"}]
    ssh, http = gw["ports"]
    assert ssh == {
        "port": 22,
        "protocol": "tcp",
        "state": "open",
        "reason": "syn-ack",
        "service": "ssh",
        "product": "OpenSSH",
        "version": "9.2p1 Debian 2+deb12u1",
        "extrainfo": "protocol 2.0",
        "scripts": [{"id": "ssh-hostkey", "output": "\n  256 aa:bb (ECDSA)\n  256 cc:dd (ED25519)"}],
    }
    assert http["scripts"] == [{"id": "http-title", "output": "Lab portal"}]
    assert second["ports"] == [
        {
            "port": 443,
            "protocol": "tcp",
            "state": "filtered",
            "reason": "no-response",
            "service": "https",
            "product": None,
            "version": None,
            "extrainfo": None,
            "scripts": [],
        }
    ]
    assert not gw["partial"] and not second["partial"]


def test_nmap_whole_documents_read_the_same_in_one_pass_and_streamed():
    """Complete output takes the fast one-pass reader; it must agree with the streaming one."""
    from actors.tools.nmap import NmapResult, _read_stream
    from actors.tools.nmap import parse as parse_nmap

    for path in sorted(SAMPLES.glob("nmap*.xml")):
        data = path.read_bytes()
        streamed = NmapResult(truncated=False)
        _read_stream(data, streamed)
        assert parse_nmap(data, truncated=False) == streamed, path.name


def test_nmap_cut_mid_host_keeps_finished_hosts_and_the_partial_one():
    cut = NMAP_XML.index(b'<port protocol="tcp" portid="443">')
    result = NMAP.parse(NMAP_XML[:cut], truncated=True)
    assert result["complete"] is False
    assert result["truncated"] is True
    assert "ended early" in result["parse_error"]
    assert [h["address"] for h in result["hosts"]] == ["10.0.0.1", "10.0.0.2"]
    assert result["hosts"][0]["partial"] is False
    assert result["hosts"][1]["partial"] is True
    assert result["hosts"][1]["ports"] == []


def test_nmap_cut_inside_a_port_keeps_what_that_port_already_said():
    cut = NMAP_XML.index(b'<service name="http"')
    result = NMAP.parse(NMAP_XML[:cut], truncated=True)
    host = result["hosts"][0]
    assert host["partial"] is True
    assert [(p["port"], p["state"], p["service"]) for p in host["ports"]] == [(22, "open", "ssh"), (80, "open", None)]


def test_nmap_cut_without_truncation_flag_is_still_reported_as_truncated():
    result = NMAP.parse(NMAP_XML[: NMAP_XML.index(b"<runstats>")], truncated=False)
    assert result["truncated"] is True
    assert len(result["hosts"]) == 2
    assert result["hosts_total"] is None


def test_nmap_error_exit_is_reported():
    xml = NMAP_XML.replace(b'exit="success"', b'exit="error" errormsg="Failed to open device eth9"')
    assert NMAP.parse(xml, truncated=False)["error"] == "Failed to open device eth9"


@pytest.mark.parametrize("data", [b"", b"   \n", b"Starting Nmap 7.93\n", b"<nmaprun", b"\xff\xfe\x00garbage"])
def test_nmap_empty_or_garbage_output_is_an_empty_result(data):
    result = NMAP.parse(data, truncated=False)
    assert result["hosts"] == []
    assert result["complete"] is False
    assert result["parse_error"]


@pytest.mark.parametrize(
    "doctype",
    [
        b'<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">',  # expansion bomb
        b'<!ENTITY b SYSTEM "file:///etc/passwd">',  # external entity
    ],
)
def test_nmap_entities_are_refused_not_expanded(doctype):
    body = b']><nmaprun><host><address addr="&b;"/></host></nmaprun>'
    xml = b'<?xml version="1.0"?><!DOCTYPE nmaprun [' + doctype + body
    result = NMAP.parse(xml, truncated=False)
    assert result["hosts"] == []
    assert "EntitiesForbidden" in result["parse_error"]


def test_nmap_progress_reads_taskprogress_lines():
    line = '<taskprogress task="SYN Stealth Scan" time="1" percent="12.50" remaining="9" etc="2"/>'
    assert NMAP.progress(line) == 12.5
    assert NMAP.progress("Connect Scan Timing: About 45.10% done; ETC: 10:01") == pytest.approx(45.1)
    assert NMAP.progress('<taskprogress task="x" percent="250"/>') == 100.0
    assert NMAP.progress("<host>") is None


# ---------------------------------------------------------------- masscan


def test_masscan_records_merge_by_host_and_port():
    result = MASSCAN.parse(MASSCAN_NEW, truncated=False)
    assert result["complete"] is True and result["truncated"] is False
    assert result["skipped"] == 0 and result["parse_error"] is None
    hosts = {h["address"]: h for h in result["hosts"]}
    assert set(hosts) == {"10.0.0.5", "10.0.0.9"}
    ports = {p["port"]: p for p in hosts["10.0.0.5"]["ports"]}
    assert [p["port"] for p in hosts["10.0.0.5"]["ports"]] == [22, 80]
    assert ports[80]["state"] == "open" and ports[80]["ttl"] == 64
    assert ports[80]["banners"] == [
        {"service": "http", "banner": "HTTP/1.1 200 OK\r\nServer: nginx"},
        {"service": "title", "banner": "Lab portal"},
    ]
    assert hosts["10.0.0.9"]["ports"][0]["protocol"] == "udp"


def test_masscan_old_style_trailing_commas_and_finished_record():
    result = MASSCAN.parse(MASSCAN_OLD, truncated=False)
    assert [h["address"] for h in result["hosts"]] == ["10.0.0.7", "10.0.0.8"]
    assert result["skipped"] == 0
    assert result["complete"] is True


def test_masscan_cut_mid_record_keeps_intact_records():
    cut = MASSCAN_NEW.index(b'"ip": "10.0.0.9"') + 10
    result = MASSCAN.parse(MASSCAN_NEW[:cut], truncated=True)
    assert [h["address"] for h in result["hosts"]] == ["10.0.0.5"]
    assert result["skipped"] == 1
    assert result["complete"] is False and result["truncated"] is True
    assert "skipped" in result["parse_error"]


def test_masscan_missing_closing_bracket_means_truncated():
    result = MASSCAN.parse(MASSCAN_OLD.replace(b"]\n", b""), truncated=False)
    assert result["truncated"] is True and result["complete"] is False
    assert len(result["hosts"]) == 2


@pytest.mark.parametrize(
    "data, hosts, skipped",
    [
        (b"", 0, 0),
        (b"[\n]\n", 0, 0),
        (b"rate:  0.00-kpps, 100.00% done\n", 0, 1),
        (b'[{"ip": 5, "ports": []},\n{"ip": "10.0.0.1", "ports": [{"port": "80"}]}\n]', 1, 2),
        (b'[{"ip": "10.0.0.1", "ports": [{"port": true}]}]', 1, 1),
    ],
)
def test_masscan_odd_input_is_counted_not_fatal(data, hosts, skipped):
    result = MASSCAN.parse(data, truncated=False)
    assert len(result["hosts"]) == hosts
    assert result["skipped"] == skipped


def test_masscan_progress_takes_the_latest_figure_of_a_rewritten_line():
    line = "rate:  0.10-kpps, 12.00% done,   0:00:20 remaining\rrate:  0.10-kpps, 47.25% done,   0:00:09 remaining"
    assert MASSCAN.progress(line) == pytest.approx(47.25)
    assert MASSCAN.progress("Starting masscan 1.3.2") is None


# ---------------------------------------------------------------- gobuster


def test_gobuster_dir_lines():
    result = GOBUSTER.parse(GOBUSTER_DIR, truncated=False)
    findings = [(f["path"], f["status"], f["size"], f["redirect"]) for f in result["findings"]]
    assert findings == [
        ("/.htaccess", 403, 277, None),
        ("/admin", 301, 0, "/admin/"),
        ("/index.php", 200, 11321, None),
        ("/server-status", 403, None, None),
        ("/robots.txt", 200, 48, None),
        ("/login", 200, 512, None),
        ("http://10.0.0.5/api/", 401, 12, None),
    ]
    assert all(f["host"] is None for f in result["findings"])
    assert result["unparsed_lines"] == 2  # the progress line and the banner rule


def test_gobuster_vhost_lines_in_current_and_older_styles():
    result = GOBUSTER.parse(GOBUSTER_VHOST, truncated=True)
    findings = [(f["host"], f["status"], f["size"], f["redirect"]) for f in result["findings"]]
    assert findings == [
        ("admin.lab.internal", 200, 123, None),
        ("old.lab.internal", 302, 0, "https://new.lab.internal/"),
        ("dev.lab.internal", 200, 9, None),
        ("legacy.lab.internal", 403, 40, None),
    ]
    assert all(f["path"] is None for f in result["findings"])
    assert result["truncated"] is True
    assert result["unparsed_lines"] == 0


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"Error: the server returns a status code that matches"])
def test_gobuster_odd_output(data):
    result = GOBUSTER.parse(data, truncated=False)
    assert result["findings"] == []


def test_gobuster_progress_from_counts():
    assert GOBUSTER.progress("Progress: 120 / 480 (25.00%)") == pytest.approx(25.0)
    assert GOBUSTER.progress("Progress: 1 / 0 (0%)") is None
    assert GOBUSTER.progress("/admin (Status: 301)") is None


def test_a_crashing_parser_becomes_a_parse_error(monkeypatch):
    from dataclasses import replace

    def boom(stdout, truncated):
        raise RuntimeError("bug")

    spec = replace(NMAP, parser=boom)
    result = spec.parse(NMAP_XML, truncated=True)
    assert result["parse_error"] == "RuntimeError: bug"
    assert result["truncated"] is True and result["hosts"] == []
