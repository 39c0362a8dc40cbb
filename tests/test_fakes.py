"""The fake scanners: output shaped like the real tools', scenarios, and call records tests can count on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from actors.runner import MINIMAL_ENV
from tests.fakes.install import FAKES_DIR, TOOLS, install_fake, max_concurrency, read_calls, running, set_scenario
from tests.helpers import process_alive, wait_until

GOBUSTER_LINE = re.compile(r"^\r\x1b\[2K(?P<path>\S+) +\(Status: (?P<status>\d+)\) \[Size: (?P<size>\d+)\]"
                           r"(?: \[--> (?P<redirect>\S+)\])?$")


def fake(binary: Path, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a fake the way the daemon does: minimal environment, no stdin."""
    return subprocess.run([str(binary), *argv], env=dict(MINIMAL_ENV), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


def start(binary: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([str(binary), *argv], env=dict(MINIMAL_ENV), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def nmap_xml(stdout: bytes) -> ET.Element:
    return ET.fromstring(stdout)


def child(element: ET.Element, path: str) -> ET.Element:
    """The first match of `path` under `element`; the test fails if there is none."""
    match = element.find(path)
    assert match is not None, f"no {path} under <{element.tag}>"
    return match


def attribute(element: ET.Element, name: str) -> str:
    """An attribute that must be there."""
    value = element.get(name)
    assert value is not None, f"<{element.tag}> has no {name}"
    return value


def ports_of(host: ET.Element) -> dict[int, str]:
    return {int(attribute(p, "portid")): attribute(child(p, "state"), "state") for p in host.iter("port")}


# --------------------------------------------------------------------------- versions


def test_versions_look_like_the_real_ones(tmp_path):
    nmap, masscan, gobuster = (install_fake(tmp_path, tool) for tool in ("nmap", "masscan", "gobuster"))
    assert fake(nmap, "--version").stdout.startswith(b"Nmap version 7.93 ( https://nmap.org )\n")
    version = fake(masscan, "--version")
    assert b"\nMasscan version 1.3.2 " in version.stdout and version.returncode == 1  # as masscan does
    assert fake(gobuster, "version").stdout == b"3.5\n"
    refused = fake(gobuster, "--version")
    assert refused.returncode == 1 and refused.stderr == b"Error: unknown flag: --version\n"


def test_version_queries_ignore_the_failure_mode(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang")
    assert fake(nmap, "--version", timeout=10).returncode == 0


# --------------------------------------------------------------------------- nmap


def test_nmap_xml_reports_the_requested_ports_of_the_target(tmp_path):
    nmap = install_fake(tmp_path, "nmap", ports=[22, 80])
    argv = ["-sV", "-Pn", "-T4", "-p", "22,80,443", "--stats-every", "2s", "-oX", "-", "10.0.0.5"]
    result = fake(nmap, *argv)
    assert result.returncode == 0
    root = nmap_xml(result.stdout)
    assert root.get("args") == "nmap " + " ".join(argv)
    assert child(root, "scaninfo").get("numservices") == "3"
    (host,) = root.iter("host")
    assert child(host, "address").get("addr") == "10.0.0.5"
    assert ports_of(host) == {22: "open", 80: "open", 443: "closed"}
    ssh = child(host, "ports/port[@portid='22']/service")
    assert (ssh.get("name"), ssh.get("product")) == ("ssh", "OpenSSH")
    assert child(root, "runstats/hosts").attrib == {"up": "1", "down": "0", "total": "1"}
    assert len(root.findall("taskprogress")) >= 1
    assert b"-&#45;stats-every" in result.stdout  # nmap's own escaping of "--" in its comment


def test_nmap_reports_progress_only_when_asked(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    assert b"<taskprogress" not in fake(nmap, "-p", "22", "-oX", "-", "10.0.0.5").stdout


def test_nmap_summarises_many_closed_ports(tmp_path):
    nmap = install_fake(tmp_path, "nmap", ports=[22, 80, 8443])
    root = nmap_xml(fake(nmap, "-p", "1-1000", "-oX", "-", "10.0.0.5").stdout)
    (host,) = root.iter("host")
    assert ports_of(host) == {22: "open", 80: "open"}
    assert child(host, "ports/extraports").attrib == {"state": "closed", "count": "998"}


def test_nmap_scans_a_network(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    root = nmap_xml(fake(nmap, "-p", "22", "-oX", "-", "10.0.0.0/24").stdout)
    assert [child(h, "address").get("addr") for h in root.iter("host")] == ["10.0.0.1"]
    assert child(root, "runstats/hosts").attrib == {"up": "1", "down": "255", "total": "256"}

    set_scenario(nmap, up_hosts=["10.0.0.7", "10.0.0.9", "10.9.9.9"])
    root = nmap_xml(fake(nmap, "-p", "22", "-oX", "-", "10.0.0.0/28").stdout)
    assert [child(h, "address").get("addr") for h in root.iter("host")] == ["10.0.0.7", "10.0.0.9"]


def test_nmap_host_names_resolve_only_through_the_scenario(tmp_path):
    nmap = install_fake(tmp_path, "nmap", resolve={"web.lab.internal": "10.0.0.5"})
    root = nmap_xml(fake(nmap, "-p", "80", "-oX", "-", "web.lab.internal").stdout)
    (host,) = root.iter("host")
    assert child(host, "address").get("addr") == "10.0.0.5"
    assert child(host, "hostnames/hostname").get("name") == "web.lab.internal"

    unknown = fake(nmap, "-p", "80", "-oX", "-", "other.lab.internal")
    assert b'Failed to resolve "other.lab.internal".' in unknown.stderr
    assert list(nmap_xml(unknown.stdout).iter("host")) == []


def test_nmap_without_xml_prints_its_text_report(tmp_path):
    nmap = install_fake(tmp_path, "nmap", ports=[22])
    text = fake(nmap, "-p", "22,80", "10.0.0.5").stdout.decode()
    assert text.startswith("Starting Nmap 7.93 ( https://nmap.org ) at ")
    assert "Nmap scan report for 10.0.0.5\n" in text
    assert "22/tcp open  ssh\n" in text
    assert re.search(r"\n\nNmap done: 1 IP address \(1 host up\) scanned in \d+\.\d\d seconds\n$", text)


def test_nmap_slow_mode_reports_progress_over_time(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="slow", delay_sec=0.3, steps=3)
    root = nmap_xml(fake(nmap, "-p", "22", "--stats-every", "1s", "-oX", "-", "10.0.0.5").stdout)
    percents = [float(attribute(t, "percent")) for t in root.findall("taskprogress")]
    assert percents == [25.0, 50.0, 75.0]
    assert float(attribute(child(root, "runstats/finished"), "elapsed")) >= 0.3


# --------------------------------------------------------------------------- masscan


def test_masscan_json_lists_open_ports_per_record(tmp_path):
    masscan = install_fake(tmp_path, "masscan", ports=[22, 80, 8080])
    result = fake(masscan, "-p80,22,443", "--rate", "100", "-oJ", "-", "10.0.0.0/30")
    assert result.returncode == 0
    records = json.loads(result.stdout)
    assert [(r["ip"], r["ports"][0]["port"], r["ports"][0]["status"]) for r in records] == [
        ("10.0.0.1", 22, "open"),
        ("10.0.0.1", 80, "open"),
    ]
    assert result.stdout.startswith(b'[\n{   "ip": "10.0.0.1",   "timestamp": "')
    assert b"Scanning 4 hosts [3 ports/host]" in result.stderr
    assert result.stderr.endswith(b"found=2       \r")


def test_masscan_long_output_options_and_ranges(tmp_path):
    masscan = install_fake(tmp_path, "masscan", ports=[443], up_hosts=["10.0.0.9"])
    result = fake(masscan, "--ports", "443", "--rate", "50", "--output-format", "json", "--output-filename", "-",
                  "--range", "10.0.0.8-10.0.0.11")
    assert [(r["ip"], r["ports"][0]["port"]) for r in json.loads(result.stdout)] == [("10.0.0.9", 443)]
    assert b"Scanning 4 hosts [1 ports/host]" in result.stderr
    listed = fake(masscan, "-p443", "--output-format", "list", "--output-filename", "-", "10.0.0.9")
    assert listed.stdout.startswith(b"#masscan\nopen tcp 443 10.0.0.9 ") and listed.stdout.endswith(b"# end\n")


def test_masscan_banners_and_the_trailing_comma_style(tmp_path):
    masscan = install_fake(tmp_path, "masscan", ports=[80], json_style="trailing_comma")
    stdout = fake(masscan, "-p80", "--banners", "-oJ", "-", "10.0.0.5").stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(stdout)
    records = json.loads(re.sub(rb",\s*\]\s*$", b"]", stdout))
    assert records[1]["ports"][0]["service"]["name"] == "http"
    assert records[1]["ports"][0]["service"]["banner"].startswith("HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["10.0.0.5"], b"FAIL: no ports were specified"),
        (["-p80"], b"FAIL: target IP address list empty"),
        (["-p80", "web.lab.internal"], b'FAIL: unknown command-line parameter "web.lab.internal"'),
        (["-p80", "--range", "10.0.0.300"], b"ERROR: bad IP address/range: 10.0.0.300"),
    ],
)
def test_masscan_refuses_what_the_real_one_refuses(tmp_path, argv, message):
    result = fake(install_fake(tmp_path, "masscan"), *argv)
    assert result.returncode == 1 and message in result.stderr


# --------------------------------------------------------------------------- gobuster


def test_gobuster_dir_lines_follow_the_wordlist_and_extensions(tmp_path):
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("# comment\nadmin\nindex\nrobots\nbackup\n")
    gobuster = install_fake(tmp_path, "gobuster", paths=[
        {"path": "/admin", "status": 301, "size": 0, "redirect": "/admin/"},
        {"path": "/index.php", "status": 200, "size": 1043},
        {"path": "/robots.txt", "status": 200, "size": 26},
        {"path": "/secret", "status": 200, "size": 5},
    ])
    result = fake(gobuster, "dir", "-u", "http://10.0.0.5:8080/", "-w", str(wordlist), "-x", "php,txt",
                  "-t", "10", "-H", "Host: web.lab.internal", "-q", "--no-color", "--no-progress")
    assert result.returncode == 0 and result.stderr == b""
    lines = result.stdout.decode().split("\n")[:-1]  # splitlines() would also split at the \r
    found = [match.groupdict() for match in map(GOBUSTER_LINE.match, lines) if match]
    assert len(found) == len(lines), lines
    assert found == [
        {"path": "/admin", "status": "301", "size": "0", "redirect": "/admin/"},
        {"path": "/index.php", "status": "200", "size": "1043", "redirect": None},
        {"path": "/robots.txt", "status": "200", "size": "26", "redirect": None},
    ]
    assert lines[0] == "\r\x1b[2K/admin                (Status: 301) [Size: 0] [--> /admin/]"


def test_gobuster_banner_progress_and_status_filters(tmp_path):
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("admin\nindex.html\nserver-status\n")
    gobuster = install_fake(tmp_path, "gobuster")
    result = fake(gobuster, "dir", "-u", "http://10.0.0.5/", "-w", str(wordlist), "-b", "403,404")
    text = result.stdout.decode()
    assert "Gobuster v3.5" in text and "Starting gobuster in directory enumeration mode" in text
    assert "/server-status" not in text and "/index.html" in text
    assert result.stderr == b"\rProgress: 3 / 3 (100.00%)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dir", "-u", "http://10.0.0.5/", "-w", "/nonexistent/words.txt"], b'wordlist file "/nonexistent/words.txt"'),
        (["dir", "-w", "/nonexistent/words.txt"], b'required flag(s) "url" not set'),
        (["fuzz", "-u", "http://10.0.0.5/FUZZ"], b'unknown command "fuzz"'),
    ],
)
def test_gobuster_refuses_what_the_real_one_refuses(tmp_path, argv, message):
    result = fake(install_fake(tmp_path, "gobuster"), *argv)
    assert result.returncode == 1 and message in result.stderr


def test_gobuster_dns_mode(tmp_path):
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("www\nftp\nmail\n")
    gobuster = install_fake(tmp_path, "gobuster", subdomains=["mail", "vpn"])
    result = fake(gobuster, "dns", "-d", "lab.internal", "-w", str(wordlist), "-q", "-z")
    assert result.stdout == b"\r\x1b[2KFound: mail.lab.internal\n"


# --------------------------------------------------------------------------- modes


def test_fail_mode_exits_with_the_error(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="fail", exit_code=3, stderr="boom\n")
    result = fake(nmap, "10.0.0.5")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"", b"boom\n")
    assert read_calls(nmap)[0]["exit_code"] == 3


def test_ok_mode_can_end_with_an_exit_code(tmp_path):
    nmap = install_fake(tmp_path, "nmap", exit_code=1)
    result = fake(nmap, "-oX", "-", "10.0.0.5")
    assert result.returncode == 1 and result.stdout.endswith(b"</nmaprun>\n")


def test_crash_mode_dies_of_the_signal_mid_document(tmp_path):
    masscan = install_fake(tmp_path, "masscan", mode="crash", signal=signal.SIGABRT, ports=[22, 80, 443])
    result = fake(masscan, "-p1-1000", "-oJ", "-", "10.0.0.5")
    assert result.returncode == -signal.SIGABRT
    assert result.stdout.startswith(b"[\n{") and not result.stdout.rstrip().endswith(b"]")
    assert read_calls(masscan)[0]["exit_code"] is None


def test_flood_mode_writes_exactly_the_bytes_asked_for(tmp_path):
    (tmp_path / "words.txt").write_text("admin\n")
    gobuster = install_fake(tmp_path, "gobuster", mode="flood", flood_bytes=3_000_001)
    result = fake(gobuster, "dir", "-u", "http://10.0.0.5/", "-w", str(tmp_path / "words.txt"))
    assert result.returncode == 0 and len(result.stdout) == 3_000_001 and result.stderr == b""


def test_hang_with_child_records_both_pids(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="hang_with_child")
    proc = start(nmap, "-oX", "-", "10.0.0.5")
    try:
        (call,) = wait_until(lambda: read_calls(nmap), what="the start record")
        assert call["pid"] == proc.pid and call["ppid"] == os.getpid()
        assert process_alive(call["pid"]) and process_alive(call["child_pid"])
        assert os.getpgid(call["child_pid"]) == proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def calls_if_three(binary: Path) -> list[dict[str, Any]] | None:
    calls = read_calls(binary)
    return calls if len(calls) == 3 else None


def test_block_mode_waits_for_its_release_file(tmp_path):
    release = tmp_path / "release"
    nmap = install_fake(tmp_path, "nmap", mode="block", release_file=str(release))
    procs = [start(nmap, "-p", "22", "-oX", "-", "10.0.0.5") for _ in range(3)]
    try:
        calls = wait_until(lambda: calls_if_three(nmap), what="three blocked calls")
        assert len(running(calls)) == 3
        assert all(proc.poll() is None for proc in procs)
        release.touch()
        outputs = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert all(proc.returncode == 0 for proc in procs)
    assert all(out.endswith(b"</nmaprun>\n") for out, _ in outputs)
    calls = read_calls(nmap)
    assert running(calls) == [] and max_concurrency(calls) == 3


# --------------------------------------------------------------------------- records and installation


def test_every_call_is_recorded_with_start_and_end(tmp_path):
    gobuster = install_fake(tmp_path, "gobuster")
    fake(gobuster, "version")
    fake(gobuster, "dir", "-u", "http://10.0.0.5/", "-w", "/nonexistent")
    calls = read_calls(gobuster)
    assert [c["argv"] for c in calls] == [["version"], ["dir", "-u", "http://10.0.0.5/", "-w", "/nonexistent"]]
    assert [c["exit_code"] for c in calls] == [0, 1]
    for call in calls:
        assert call["ppid"] == os.getpid() and call["mono"] <= call["end_mono"] and call["time"] <= call["end"]
        assert call["ray_node"] is None  # no raylet among this test's ancestors
    assert max_concurrency(calls) == 1
    assert read_calls(gobuster) == read_calls(str(gobuster) + ".calls.jsonl")


def test_a_call_records_the_node_of_the_raylet_it_runs_under(tmp_path):
    nmap = install_fake(tmp_path, "nmap")
    # A stand-in raylet (a process whose command line is a raylet's) starts a worker, which runs the fake.
    worker = f"import subprocess; subprocess.run([{str(nmap)!r}, '-oX', '-', '10.0.0.5'], env={dict(MINIMAL_ENV)!r})"
    raylet = f"import subprocess; subprocess.run([{sys.executable!r}, '-c', {worker!r}])"
    resources = "labrecon_b,100,node:127.0.0.1,1.0,CPU,1,memory,1073741824"
    argv = ["/opt/ray/raylet/raylet", "-c", raylet, "--node_id=5eed", f"--static_resource_list={resources}"]
    subprocess.run(argv, executable=sys.executable, check=True, timeout=30)
    [call] = read_calls(nmap)
    assert call["ray_node"] == {
        "node_id": "5eed",
        "resources": {"labrecon_b": 100.0, "node:127.0.0.1": 1.0, "CPU": 1.0, "memory": 1073741824.0},
    }


def test_max_concurrency_counts_overlaps():
    def call(start, end):
        return {"mono": start, "end_mono": end}

    assert max_concurrency([]) == 0
    assert max_concurrency([call(0, 1), call(1, 2), call(2, 3)]) == 1
    assert max_concurrency([call(0, 3), call(1, 2), call(1.5, None), call(4, 5)]) == 3


def test_a_fake_run_from_its_own_directory_records_nothing():
    before = set(os.listdir(FAKES_DIR))
    assert fake(FAKES_DIR / "nmap", "-p", "22", "-oX", "-", "10.0.0.5").returncode == 0
    assert {name for name in os.listdir(FAKES_DIR) if name.endswith(".jsonl")} <= before


def test_install_replaces_the_scenario_and_refuses_unknown_tools(tmp_path):
    nmap = install_fake(tmp_path, "nmap", mode="fail")
    assert install_fake(tmp_path, "nmap") == nmap
    assert fake(nmap, "-oX", "-", "10.0.0.5").returncode == 0
    with pytest.raises(ValueError):
        install_fake(tmp_path, "hydra")


def test_fakes_have_no_way_to_reach_the_network():
    sources = [FAKES_DIR / tool for tool in TOOLS] + [FAKES_DIR / "scenario.py"]
    for source in sources:
        text = source.read_text()
        for module in ("socket", "urllib", "http.client", "subprocess", "ssl", "ray"):
            assert not re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", text, re.M), (source, module)
