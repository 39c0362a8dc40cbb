"""Scanner stand-ins that exit at once, so a benchmark measures labrecon rather than Python start-up.

Each is a two-line /bin/sh script that prints a small, valid document in the
tool's machine-readable format and exits. They never open a socket.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# nmap's data (nse_main.lua, scripts/script.db) must sit beside its binary for labrecon to run it.
NMAP_DATA = Path(__file__).resolve().parent.parent / "tests" / "fakes"

NMAP_XML = (
    '<?xml version="1.0"?><nmaprun scanner="nmap" args="nmap" version="7.93">'
    '<host><status state="up" reason="syn-ack"/><address addr="10.0.0.5" addrtype="ipv4"/>'
    '<ports><port protocol="tcp" portid="22"><state state="open" reason="syn-ack"/>'
    '<service name="ssh"/></port></ports></host>'
    '<runstats><finished time="0" elapsed="0.01" exit="success"/></runstats></nmaprun>'
)
MASSCAN_JSON = (
    '[\n{"ip": "10.0.0.5", "timestamp": "0", "ports": [ {"port": 80, "proto": "tcp", "status": "open"} ] }\n]'
)
GOBUSTER_LINES = "/admin                (Status: 301) [Size: 0] [--> /admin/]"

OUTPUTS = {"nmap": NMAP_XML, "masscan": MASSCAN_JSON, "gobuster": GOBUSTER_LINES}


def install_fast_fakes(directory: Path) -> dict[str, str]:
    """Write the three scripts, and nmap's data beside them, into `directory`; returns tool -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tool, text in OUTPUTS.items():
        path = directory / tool
        quoted = text.replace("'", "'\\''")
        path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{quoted}'\n")
        path.chmod(0o755)
        paths[tool] = str(path)
    shutil.copy(NMAP_DATA / "nse_main.lua", directory / "nse_main.lua")
    (directory / "scripts").mkdir(exist_ok=True)
    shutil.copy(NMAP_DATA / "scripts" / "script.db", directory / "scripts" / "script.db")
    return paths

