"""What a reload changes, decided from the settings in force and the new ones alone (pure).

`plan_reload` names every key that differs (a secret by its key, never its value), keeps the keys
that cannot change while serving (what a bound socket, an open file or a running supervisor was
made from) at their running values and reports them as needing a restart, and says for each tool
whether it gets new limits, a new incarnation, or goes out of or back into service.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from actors.settings import ToolSettings
from supervisor.config import Settings
from supervisor.tool_changes import ChangeKind

RESTART_KEYS: tuple[str, ...] = (
    "http.host",
    "http.port",
    "http.ops_socket",
    "http.max_sessions",
    "http.session_idle_sec",
    "http.session_unused_sec",
    "http.max_sessions_per_client",
    "http.max_body_bytes",
    "http.stream_close_sec",
    "http.resume_window_sec",
    "scans.path",
    "logging.audit_path",
    "supervisor",
    "faults",
    "config.watch",
    "telemetry",
    "cluster",
)
"""Keys (or whole sections) a running daemon cannot change; a reload keeps them and says so."""

LIVE_TOOL_KEYS: frozenset[str] = frozenset(ToolSettings.model_fields) - {"binary", "enabled"}
"""Tool keys a serving incarnation takes as a message; any other (the binary, a tool's own keys) needs a new one."""


@dataclass(frozen=True)
class ReloadPlan:
    settings: Settings  # what will be in force: the new settings, restart-only keys as they run now
    changed: tuple[str, ...]  # every key that differs, restart-only ones included
    needs_restart: tuple[str, ...]  # the changed keys kept at their running values
    tools: dict[str, ChangeKind]  # each tool that changes, and how

    @property
    def applied(self) -> tuple[str, ...]:
        return tuple(key for key in self.changed if key not in self.needs_restart)


def plan_reload(old: Settings, new: Settings, operator_disabled: Collection[str] = ()) -> ReloadPlan:
    """The plan that takes a runtime from `old` to `new`; `operator_disabled` tools stay out of service."""
    changed = tuple(changed_keys(old, new))
    needs_restart = tuple(key for key in changed if _restart_only(key))
    in_force = new
    for key in needs_restart:
        in_force = _with_value(in_force, key.split("."), _value_at(old, key.split(".")))
    tools: dict[str, ChangeKind] = {}
    for name, before in old.tools.items():
        after = getattr(in_force.tools, name, before)
        kind = tool_change(before, after, disabled=name in operator_disabled)
        if kind is not None:
            tools[name] = kind
    return ReloadPlan(in_force, changed, needs_restart, tools)


def tool_change(before: ToolSettings, after: ToolSettings, *, disabled: bool = False) -> ChangeKind | None:
    """How one tool changes; None when it does not."""
    served, serves = before.enabled and not disabled, after.enabled and not disabled
    if served and not serves:
        return "disable"
    if serves and not served:
        return "enable"
    differing = set(changed_keys(before, after))
    if not differing:
        return None
    if not serves or {key.split(".")[0] for key in differing} <= LIVE_TOOL_KEYS:
        return "limits"  # a tool out of service only keeps its new settings for when it is back
    return "replace"


def changed_keys(old: BaseModel, new: BaseModel, prefix: str = "") -> Iterator[str]:
    """Every leaf key whose value differs, dotted; lists and maps are compared, and named, whole."""
    for name in sorted(set(type(old).model_fields) | set(type(new).model_fields)):
        key = f"{prefix}{name}"
        before, after = getattr(old, name, None), getattr(new, name, None)
        if isinstance(before, BaseModel) and isinstance(after, BaseModel) and type(before) is type(after):
            yield from changed_keys(before, after, f"{key}.")
        elif before != after:  # SecretStr compares its secret, and shows only the key
            yield key


def _restart_only(key: str) -> bool:
    return any(key == fixed or key.startswith(f"{fixed}.") for fixed in RESTART_KEYS)


def _value_at(model: BaseModel, path: list[str]) -> Any:
    value: Any = model
    for part in path:
        value = getattr(value, part)
    return value


def _with_value(model: BaseModel, path: list[str], value: Any) -> Any:
    """`model` with the key at `path` set to `value` (frozen models are copied, never changed)."""
    head, *rest = path
    inner = value if not rest else _with_value(getattr(model, head), rest, value)
    return model.model_copy(update={head: inner})
