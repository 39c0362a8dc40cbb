"""A table of hostile calls: every one must be refused before anything runs."""

from __future__ import annotations

from typing import Any

import pytest

from actors.policy import TargetPolicy
from actors.prepare import prepare_call
from actors.results import InvalidCall
from actors.settings import PolicySettings
from actors.tools import TOOL_SPECS
from actors.tools.gobuster import GobusterSettings
from actors.tools.masscan import MasscanSettings
from actors.tools.nmap import NmapSettings

POLICY = TargetPolicy(
    PolicySettings(
        hosts={"web.lab.internal": "10.0.0.7", "meta.lab.internal": "169.254.169.254"},
        dns=False,
        max_hosts=256,
    )
)
SETTINGS = {
    "nmap": NmapSettings(allowed_scripts=("default", "safe", "banner", "http-title")),
    "masscan": MasscanSettings(max_rate=1000),
    "gobuster": GobusterSettings(max_threads=10),
}

HOSTILE_TARGETS = [
    "8.8.8.8",
    "1.1.1.1",
    "0.0.0.0",
    "127.0.0.1",
    "169.254.169.254",
    "240.0.0.1",
    "255.255.255.255",
    "100.64.0.1",
    "010.0.0.1",
    "0x0a000001",
    "0xa.0.0.1",
    "167772161",
    "10.1",
    "10.0.1",
    "10.0.0.*",
    "10.0.0.1-254",
    "10.0.0.1,8.8.8.8",
    "10.0.0.1 8.8.8.8",
    "10.0.0.1\n8.8.8.8",
    "10.0.0.0/8",  # over the host cap
    "0.0.0.0/0",
    "10.0.0.5/24",
    "8.8.8.0/24",
    "-iL /etc/passwd",
    "-oN/tmp/x",
    "--script=http-brute",
    "evil.com",
    "lab.internal.evil.com",
    "evillab.internal",
    "meta.lab.internal",  # static map points at the metadata service
    "unknown.lab.internal",  # not in the static map and DNS is off
    "::1",
    "fd00::1",
    "::ffff:10.0.0.1",
    "http://10.0.0.5/",
    "10.0.0.5:80",
    "$(id)",
    "`id`",
    "10.0.0.5;id",
    "web.lab.internal/../",
]

HOSTILE_NMAP_ARGS = [
    "-iL /etc/passwd",
    "-iL/etc/passwd",
    "-iR 100",
    "-oN /tmp/out",
    "-oX -",
    "-oX=/tmp/x",
    "-oA/tmp/x",
    "-oG /tmp/x",
    "--append-output",
    "--script http-brute",
    "--script=vuln",
    "--script exploit",
    "--script intrusive",
    "--script all",
    "--script broadcast-dhcp-discover",
    "--script 'default or intrusive'",
    "--script ./evil.nse",
    "--script /tmp/evil.nse",
    "--script http-*",
    "--script-args user=admin",
    "--script-args-file=/tmp/args",
    "--scr default",
    "-sC --script-args=x",
    "--datadir /tmp",
    "-datadir=/tmp",
    "--resume /tmp/scan.xml",
    "--excludefile /tmp/x",
    "--exclude 10.0.0.1",
    "--servicedb /tmp/db",
    "--versiondb /tmp/db",
    "--stylesheet http://evil/x.xsl",
    "--send-eth",
    "--send-ip",
    "--privileged",
    "-S 10.0.0.99",
    "-D RND:10",
    "--spoof-mac 0",
    "-e eth0",
    "-g 53",
    "--source-port 53",
    "--proxies socks4://1.2.3.4:1080",
    "--data-string hello",
    "--ttl 1",
    "-b anonymous@ftp.example.com",
    "-sI zombie.example.com",
    "-A",
    "-6",
    "-T5",
    "-T 5",
    "--max-rate 1000000",
    "--min-rate=999999",
    "--top-ports 70000",
    "-p-",
    "-p 0",
    "-p 1-70000",
    "-p http",
    "-p 80 8.8.8.8",
    "8.8.8.8",
    "--dns-servers 8.8.8.8",
    "-R",
    "-sL",
    "-d9",
    "--packet-trace",
    "--host-timeout 999h",
    "--host-timeout 0",  # zero switches nmap's per-host limit off
    "--host-timeout=0ms",
    "--host-timeout 1500ms",
    "--max-rtt-timeout 0",
    "--min-rate 0",
    "--scan-delay 1h",
    "--version-intensity 10",
    "-p '80,$(id)'",
    "-p",
    "--top-ports",
    "-Pn -Pn",
    "'unterminated",
    "-- -sV",
    "--open=yes",
]

HOSTILE_MASSCAN_ARGS = [
    "-c /tmp/masscan.conf",
    "-c/tmp/masscan.conf",
    "--conf /tmp/masscan.conf",
    "--conf=/tmp/masscan.conf",
    "--resume paused.conf",
    "--includefile /tmp/targets",
    "--excludefile /tmp/x",
    "-iL /tmp/targets",
    "--range 0.0.0.0/0",
    "--range=8.8.8.8",
    "8.8.8.8",
    "-oX /tmp/out.xml",
    "-oJ -",
    "--output-filename /tmp/x",
    "--output-format binary",
    "--rate 1000000",
    "--rate=1001",
    "--max-rate 5000",
    "--adapter-ip 10.0.0.99",
    "--source-ip 10.0.0.99",
    "-S 10.0.0.99",
    "--router-mac 66-55-44-33-22-11",
    "-e eth1",
    "--echo",
    "--readscan /tmp/x.bin",
    "--pcap /tmp/x.pcap",
    "--infinite",
    "--hello-file /tmp/x",
    "--Rate 100",  # masscan itself ignores case and dashes; we do not
    "--ports=1-70000",
    "--rate 0",
    "--wait forever",
    "--connection-timeout 0",
]

HOSTILE_GOBUSTER_ARGS = [
    "-o /tmp/out",
    "--output=/tmp/out",
    "-w /etc/passwd",
    "-w ../../etc/passwd",
    "--wordlist=/usr/share/wordlists/rockyou.txt",
    "-w -",
    "--proxy http://1.2.3.4:8080",
    "-p /tmp/patterns",
    "--pattern=/tmp/patterns",
    "-u http://8.8.8.8/",
    "--url=http://evil/",
    "-H 'Host: evil.com'",
    "-r",
    "--follow-redirect",
    "-c session=1",
    "-U admin -P admin",
    "--client-cert-pem /tmp/c.pem",
    "-t 500",
    "--threads=11",
    "-m POST",
    "-X /tmp/exts",
    "-e",
    "-v",
    "--timeout 1h",
    "--timeout 0s",  # Go reads a zero timeout as none at all
    "--timeout=0",
    "--delay 1h",
    "-x '../php'",
    "-s 999",
    "extra",
    "--no-tls",
]

HOSTILE_TYPED: list[tuple[str, dict[str, Any]]] = [
    ("nmap", {"ports": "-"}),
    ("nmap", {"ports": "80 -iL /etc/passwd"}),
    ("nmap", {"ports": "1-65536"}),
    ("nmap", {"scripts": ["http-brute"]}),
    ("nmap", {"scripts": ["default and intrusive"]}),
    ("nmap", {"scripts": ["../../tmp/evil"]}),
    ("nmap", {"timing": 5}),
    ("nmap", {"top_ports": 0}),
    ("nmap", {"scan_type": "idle"}),
    ("nmap", {"extra_args": "x" * 2049}),
    ("nmap", {"timeout_sec": 1e9}),
    ("nmap", {"output": "/tmp/x"}),
    ("masscan", {"ports": "80", "rate": 1001}),
    ("masscan", {"ports": "80", "rate": 0}),
    ("masscan", {"ports": "-p80"}),
    ("masscan", {"ports": "T:80"}),
    ("gobuster", {"wordlist": "/etc/passwd"}),
    ("gobuster", {"wordlist": "../common.txt"}),
    ("gobuster", {"wordlist": "missing.txt"}),
    ("gobuster", {"threads": 11}),
    ("gobuster", {"path": "/../../"}),
    ("gobuster", {"path": "http://evil/"}),
    ("gobuster", {"scheme": "ftp"}),
    ("gobuster", {"mode": "dns"}),
    ("gobuster", {"port": 0}),
    ("gobuster", {"extensions": ["php/../x"]}),
    ("gobuster", {"mode": "vhost", "extra_args": "--domain evil.com"}),
    ("gobuster", {"mode": "vhost", "extra_args": "--domain=lab.internal.evil.com"}),
    ("gobuster", {"mode": "vhost", "target": "web.lab.internal", "extra_args": "--domain evil.com"}),
    ("gobuster", {"mode": "vhost", "extra_args": "--append-domain"}),
    ("nmap", {"timeout_sec": "30"}),
    ("nmap", {"timeout_sec": True}),
    ("nmap", {"top_ports": True}),
    ("nmap", {"timing": "4"}),
    ("nmap", {"ports": True}),
    ("nmap", {"ports": [80, "-iL", "/etc/passwd"]}),
    ("nmap", {"ports": ["80 -iL /etc/passwd"]}),
    ("masscan", {"ports": "80", "banners": "yes"}),
    ("masscan", {"ports": "80", "rate": "100"}),
    ("masscan", {"ports": []}),
    ("masscan", {"ports": 0}),
    ("gobuster", {"port": "8080"}),
    ("gobuster", {"threads": True}),
]


def base_arguments(tool: str) -> dict:
    return {"target": "10.0.0.5", **({"ports": "80"} if tool == "masscan" else {})}


CASES = (
    [pytest.param(tool, {**base_arguments(tool), "target": t}, id=f"target-{tool}-{t!r}")
     for t in HOSTILE_TARGETS for tool in ("nmap", "masscan")]
    + [pytest.param("gobuster", {"target": t}, id=f"target-gobuster-{t!r}") for t in HOSTILE_TARGETS[:20]]
    + [pytest.param("nmap", {"target": "10.0.0.5", "extra_args": a}, id=f"nmap-{a!r}") for a in HOSTILE_NMAP_ARGS]
    + [pytest.param("masscan", {**base_arguments("masscan"), "extra_args": a}, id=f"masscan-{a!r}")
       for a in HOSTILE_MASSCAN_ARGS]
    + [pytest.param("gobuster", {"target": "10.0.0.5", "extra_args": a}, id=f"gobuster-{a!r}")
       for a in HOSTILE_GOBUSTER_ARGS]
    + [pytest.param(tool, {**base_arguments(tool), **extra}, id=f"typed-{tool}-{extra!r}")
       for tool, extra in HOSTILE_TYPED]
)  # fmt: skip


def test_the_table_is_large():
    assert len(CASES) >= 100
    assert len(HOSTILE_TARGETS) + len(HOSTILE_NMAP_ARGS) + len(HOSTILE_MASSCAN_ARGS) + len(HOSTILE_GOBUSTER_ARGS) >= 100


@pytest.mark.parametrize("tool, arguments", CASES)
def test_hostile_call_is_refused(tool, arguments):
    with pytest.raises(InvalidCall) as info:
        prepare_call(TOOL_SPECS[tool], arguments, settings=SETTINGS[tool], policy=POLICY)
    assert info.value.field, "a refusal must name the offending argument"
    assert str(info.value)


@pytest.mark.parametrize("tool", sorted(TOOL_SPECS))
def test_the_baseline_call_is_accepted(tool):
    """Without this, the table could pass because every call fails for one reason."""
    call = prepare_call(TOOL_SPECS[tool], base_arguments(tool), settings=SETTINGS[tool], policy=POLICY)
    assert "10.0.0.5" in " ".join(call.argv)
