"""From an MCP `tools/call` to a fully checked command line, or a refusal.

This is the single gate between untrusted arguments and a process: argument
validation, the target policy, the option grammar and the time limit all run
here, before anything is queued, and every refusal is an `InvalidCall` that
names the offending field. The result is plain data the runner can execute
without further judgement.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from actors.policy import TargetPolicy
from actors.results import InvalidCall
from actors.settings import PolicySettings, ToolSettings
from actors.tools.base import ToolArguments, ToolSpec

POOL_SEPARATOR = "@"


def slot_name(tool: str, pool: str | None) -> str:
    """The name of what serves `tool` on `pool` ("nmap@dmz"), or the tool's own name when it runs here."""
    return tool if pool is None else f"{tool}{POOL_SEPARATOR}{pool}"


def split_slot_name(name: str) -> tuple[str, str | None]:
    """(tool, pool) of a slot name; the pool is None for a tool that runs here."""
    tool, separator, pool = name.partition(POOL_SEPARATOR)
    return tool, (pool if separator else None)


@dataclass(frozen=True)
class PreparedCall:
    tool: str
    target: str  # as given
    resolved_targets: tuple[str, ...]  # what the policy resolved it to; the tool's target first
    argv: tuple[str, ...]  # binary first
    timeout_sec: float
    # The validated arguments, as JSON: what a scanner node prepares the call from again before it runs it.
    arguments: Mapping[str, Any] = field(default_factory=dict, compare=False)
    pool: str | None = None  # the scanner pool whose nodes run it; None: this machine
    config: str = ""  # on a pool: `config_digest` of the settings and policy it was prepared under

    @property
    def slot(self) -> str:
        """What serves the call: the tool here, or the tool on its pool."""
        return slot_name(self.tool, self.pool)


def config_digest(settings: ToolSettings, policy: PolicySettings) -> str:
    """Names a tool's config and the policy as a call's checks read them (a pool's share of concurrency aside)."""
    checked = [settings.model_dump(mode="json", exclude={"concurrency"}), policy.model_dump(mode="json")]
    return hashlib.sha256(json.dumps(checked, sort_keys=True).encode()).hexdigest()[:16]


def on_pool(prepared: PreparedCall, pool: str, settings: ToolSettings, policy: PolicySettings) -> PreparedCall:
    """`prepared` sent to `pool`, stamped with the config it was prepared under, which its node checks it by."""
    return replace(prepared, pool=pool, config=config_digest(settings, policy))


def resolve_timeout(requested: float | None, settings: ToolSettings) -> float:
    """The run's time limit: the configured default, or the request up to the cap."""
    if requested is None:
        return settings.timeout_sec
    if not math.isfinite(requested) or requested <= 0:
        raise InvalidCall("timeout_sec must be a positive number of seconds", field="timeout_sec")
    if requested > settings.max_timeout_sec:
        raise InvalidCall(
            f"timeout_sec {requested:g} is above the maximum of {settings.max_timeout_sec:g} seconds",
            field="timeout_sec",
        )
    return float(requested)


def prepare_call(
    spec: ToolSpec,
    arguments: Mapping[str, Any] | ToolArguments,
    *,
    settings: ToolSettings,
    policy: TargetPolicy,
) -> PreparedCall:
    args = spec.validate_arguments(arguments)
    target = policy.check(args.target)
    timeout = resolve_timeout(args.timeout_sec, settings)
    argv = (settings.binary, *spec.build_argv(args, target, settings))
    return PreparedCall(
        tool=spec.name,
        target=args.target,
        resolved_targets=target.resolved,
        argv=argv,
        timeout_sec=timeout,
        arguments=args.model_dump(mode="json", exclude_unset=True),
    )
