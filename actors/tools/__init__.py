"""The tools labrecon serves, by name. Adding a tool means adding a spec here."""

from __future__ import annotations

from actors.tools.base import ToolSpec
from actors.tools.gobuster import GOBUSTER
from actors.tools.masscan import MASSCAN
from actors.tools.nmap import NMAP

TOOL_SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (NMAP, MASSCAN, GOBUSTER)}

__all__ = ["TOOL_SPECS", "ToolSpec"]
