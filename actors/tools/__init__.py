"""The tools labrecon serves, by name: nmap, masscan and gobuster, and any tool an embedder registers.

A tool is one `ToolSpec`; the configuration's `[tools.<name>]` tables, the
health checks, status and metrics are all made from the specs registered
when a runtime's settings are built. Register extra tools at start-up,
before loading settings or starting a runtime (`register(MY_TOOL)`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from actors.tools.base import ToolSpec
from actors.tools.gobuster import GOBUSTER
from actors.tools.masscan import MASSCAN
from actors.tools.nmap import NMAP

# A name is also a TOML table and an environment variable part (LABRECON_TOOLS__<NAME>__KEY).
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class ToolRegistry(Mapping[str, ToolSpec]):
    """Tool specs by name, in the order they were registered."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> ToolSpec:
        """Add a tool; its name must be new (registering the same spec again changes nothing).

        Raises:
            TypeError: `spec` is not a `ToolSpec`.
            ValueError: the name is not lower case letters, digits and underscores, or is taken.
        """
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"expected a ToolSpec, got {type(spec).__name__}")
        if not _NAME.fullmatch(spec.name):
            raise ValueError(f"tool name {spec.name!r} must be lower case letters, digits and underscores")
        known = self._specs.get(spec.name)
        if known is not None and known is not spec:
            raise ValueError(f"a tool named {spec.name!r} is registered already")
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str) -> ToolSpec:
        """Take a tool away again; raises KeyError if none has that name."""
        return self._specs.pop(name)

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


TOOL_SPECS = ToolRegistry((NMAP, MASSCAN, GOBUSTER))
register = TOOL_SPECS.register
unregister = TOOL_SPECS.unregister

__all__ = ["TOOL_SPECS", "ToolRegistry", "ToolSpec", "register", "unregister"]
