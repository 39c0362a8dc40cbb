"""Which pool runs a call, decided from its resolved targets and the configured pools alone (pure).

A call runs on the one pool whose networks hold every address (or the whole network) its target
resolved to. Pools do not overlap (the config refuses that), so there is never a choice to make; a
call that spans pools, or falls outside them all, is refused before anything is spawned, with a
message that names the pools. Without pools every call runs here.

A tool served by pools has one slot per pool, named `slot_name(tool, pool)` ("nmap@dmz"): its own
actors, concurrency, queue and breaker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from actors.prepare import slot_name, split_slot_name
from actors.results import InvalidCall
from actors.settings import IPNetwork, ToolSettings, within
from supervisor.config import PoolSettings

__all__ = [
    "LOCAL", "NO_POOL", "describe", "metric_labels", "pool_label", "pool_settings", "route", "slot_name",
    "split_slot_name",
]

LOCAL = "local"
"""The pool label of calls that run on this machine."""

NO_POOL = "none"
"""The pool label of a tool's calls refused before a pool was chosen (a daemon with pools)."""


def pool_label(name: str) -> str:
    """The bounded `pool` label of a slot: its pool's name, or "local"."""
    return split_slot_name(name)[1] or LOCAL


def metric_labels(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """The (tool, pool) labels of each name the numbers are kept under.

    Without pools every name is a tool that runs here ("local"). With pools the slots are "nmap@dmz"
    and a bare tool name only counts calls refused before a pool was chosen ("none").
    """
    names = list(names)
    pooled = any(split_slot_name(name)[1] is not None for name in names)
    labels = {}
    for name in names:
        tool, pool = split_slot_name(name)
        labels[name] = (tool, pool if pool is not None else NO_POOL if pooled else LOCAL)
    return labels


def pool_settings(tool: str, settings: ToolSettings, pool: PoolSettings | None) -> ToolSettings:
    """`tool`'s settings on `pool`: its own, with the pool's concurrency for it where the pool sets one."""
    concurrency = None if pool is None else pool.concurrency.get(tool)
    return settings if concurrency is None else settings.model_copy(update={"concurrency": concurrency})


def route(resolved: Sequence[str], pools: Sequence[PoolSettings]) -> PoolSettings | None:
    """The pool whose networks hold every resolved target; None without pools.

    Raises `InvalidCall` (field "target") when the targets fall in no pool or span several.
    """
    if not pools:
        return None
    targets = [ipaddress.ip_network(text, strict=False) for text in resolved]
    # A network reaching into two pools spans them, even when it lies inside neither.
    touched = {pool.name: pool for pool in pools for target in targets if _touches(pool, target)}
    if len(touched) > 1:
        raise InvalidCall(
            f"the target spans the pools {' and '.join(sorted(touched))}; scan each pool's part "
            f"in its own call (pools: {describe(pools)})",
            field="target",
        )
    homeless = [target for target in targets if not any(_holds(pool, target) for pool in pools)]
    if homeless:
        raise InvalidCall(f"{homeless[0]} is in no scanner pool; pools: {describe(pools)}", field="target")
    return next(iter(touched.values()))


def describe(pools: Sequence[PoolSettings]) -> str:
    """Each pool with its networks, for messages: "dmz (10.20.0.0/16), ot (10.30.0.0/16)"."""
    return ", ".join(f"{pool.name} ({', '.join(str(n) for n in pool.networks)})" for pool in pools)


def _touches(pool: PoolSettings, target: IPNetwork) -> bool:
    return any(target.version == network.version and target.overlaps(network) for network in pool.networks)


def _holds(pool: PoolSettings, target: IPNetwork) -> bool:
    return within(target, pool.networks)
