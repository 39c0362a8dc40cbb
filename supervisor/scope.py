"""What a model is told of the scope it may scan: the allowed networks, domains and host cap.

Both forms (a sentence for tool descriptions, a document for `labrecon://scope`) are read from the
same `PolicySettings` that judges every call, so what a model is told and what is enforced agree.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors.api import ToolInfo
from actors.settings import PolicySettings

__all__ = ["scope_document", "scope_sentence", "with_scope"]


def scope_document(policy: PolicySettings) -> dict[str, Any]:
    """The scope as data: what a target must be inside, and how many hosts one call may cover."""
    return {
        "allowed_networks": [str(network) for network in policy.allowed_networks],
        "allowed_domains": list(policy.allowed_domains),
        "max_hosts_per_call": policy.max_hosts,
        "rules": (
            "A target is one IPv4 address, CIDR network or host name. Every address it covers (a name's "
            "resolved address included) must lie in an allowed network, a name must end in an allowed "
            "domain, and a network may hold at most max_hosts_per_call addresses. Anything else is refused "
            "before a packet is sent."
        ),
    }


def scope_sentence(policy: PolicySettings) -> str:
    networks = _either([str(network) for network in policy.allowed_networks]) or "no network"
    domains = _either(list(policy.allowed_domains))
    names = f", or host names under {domains}" if domains else ""
    return (
        f"Scope: targets must lie in {networks}{names}; at most {policy.max_hosts} hosts per call. "
        "Other targets are refused before a packet is sent (the scope is also the resource labrecon://scope)."
    )


def with_scope(info: ToolInfo, policy: PolicySettings) -> ToolInfo:
    """A scanner tool whose description ends with the scope it may scan."""
    return replace(info, description=f"{info.description.rstrip()}\n\n{scope_sentence(policy)}")


def _either(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"
