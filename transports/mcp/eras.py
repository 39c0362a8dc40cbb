"""Which protocol revision a message speaks, and what the reply may contain at it.

Up to 2025-11-25 a connection negotiates one version in the `initialize` handshake; from 2026-07-28
every request carries its own envelope in `params._meta` and `server/discover` replaces the
handshake. These rules tell the eras apart per message, refuse unservable envelopes with the typed
-32022 error, and shape each result to its version's schema, free of session or transport state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any, Final

from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    INVALID_PARAMS,
    LOG_LEVEL_META_KEY,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
    UnsupportedProtocolVersionErrorData,
)
from mcp_types import methods as mcp_methods
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
    is_version_at_least,
)
from pydantic import ValidationError

from transports.mcp.jsonrpc import RpcError

__all__ = [
    "BATCH_VERSIONS",
    "HANDSHAKE_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "LOG_LEVELS",
    "MODERN_VERSIONS",
    "Envelope",
    "Era",
    "has_feature",
    "is_enveloped",
    "log_level_enabled",
    "negotiate_handshake",
    "read_envelope",
    "shape_result",
    "stamp_modern",
    "unsupported_version",
    "validate_request",
]

HANDSHAKE_VERSIONS: Final[tuple[str, ...]] = tuple(HANDSHAKE_PROTOCOL_VERSIONS)
MODERN_VERSIONS: Final[tuple[str, ...]] = tuple(MODERN_PROTOCOL_VERSIONS)

BATCH_VERSIONS: Final[frozenset[str]] = frozenset({"2025-03-26"})
"""JSON-RPC batches were part of MCP only in 2025-03-26 (added there, removed in 2025-06-18)."""

LOG_LEVELS: Final[tuple[str, ...]] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
"""RFC 5424 severities, least to most severe; the same scale in every revision."""

# Result fields that appeared after the oldest handshake revision. Older
# clients never asked for them, so they are left out of what those clients get.
_FEATURE_SINCE: Final[dict[str, str]] = {
    "tool_annotations": "2025-03-26",
    "tool_title": "2025-06-18",
    "output_schema": "2025-06-18",
    "structured_content": "2025-06-18",
    "resource_links": "2025-06-18",
    "resumable_streams": "2025-11-25",
    "tasks": "2025-11-25",
}


class Era(StrEnum):
    HANDSHAKE = "handshake"
    MODERN = "modern"


@dataclass(frozen=True)
class Envelope:
    """The per-request fields a 2026-07-28 request carries in `params._meta`."""

    protocol_version: str
    client_capabilities: dict[str, Any]
    client_info: dict[str, Any] | None
    log_level: str | None


def negotiate_handshake(requested: Any) -> str:
    """Echo a handshake version we speak, else offer our newest one (never a modern version)."""
    if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS:
        return requested
    return LATEST_HANDSHAKE_VERSION


def is_enveloped(params: dict[str, Any] | None) -> bool:
    """Whether a request claims the 2026-07-28 envelope.

    The reserved protocol-version key alone decides: legacy requests carry
    `_meta` too (for `progressToken`), but never keys in the
    `io.modelcontextprotocol/` namespace.
    """
    meta = (params or {}).get("_meta")
    return isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta


def unsupported_version(requested: Any, supported: tuple[str, ...] = MODERN_VERSIONS) -> RpcError:
    """The -32022 error: the one code an auto-negotiating client does not fall back from."""
    if isinstance(requested, str):
        data: dict[str, Any] = UnsupportedProtocolVersionErrorData(
            supported=list(supported), requested=requested
        ).model_dump(mode="json")
    else:
        data = {"supported": list(supported)}
    return RpcError(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version", data)


def read_envelope(params: dict[str, Any] | None, supported: tuple[str, ...] = MODERN_VERSIONS) -> Envelope:
    """Check the envelope of an enveloped request and return its fields.

    Missing required keys or a non-string version are the client's shape
    error (INVALID_PARAMS); a well-formed version we do not serve is -32022.
    """
    meta = (params or {}).get("_meta")
    if not isinstance(meta, dict):
        raise RpcError(
            INVALID_PARAMS,
            f"params._meta must be an object carrying {PROTOCOL_VERSION_META_KEY!r} "
            f"and {CLIENT_CAPABILITIES_META_KEY!r}",
        )
    missing = [key for key in (PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY) if key not in meta]
    if missing:
        raise RpcError(INVALID_PARAMS, f"params._meta is missing the required key(s): {', '.join(missing)}")
    version = meta[PROTOCOL_VERSION_META_KEY]
    if not isinstance(version, str):
        raise RpcError(INVALID_PARAMS, f"{PROTOCOL_VERSION_META_KEY} must be a string")
    if version not in supported:
        raise unsupported_version(version, supported)
    capabilities = meta[CLIENT_CAPABILITIES_META_KEY]
    if not isinstance(capabilities, dict):
        raise RpcError(INVALID_PARAMS, f"{CLIENT_CAPABILITIES_META_KEY} must be an object")
    info = meta.get(CLIENT_INFO_META_KEY)
    level = meta.get(LOG_LEVEL_META_KEY)
    if level is not None and level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"{LOG_LEVEL_META_KEY} must be one of {', '.join(LOG_LEVELS)}")
    return Envelope(
        protocol_version=version,
        client_capabilities=capabilities,
        client_info=info if isinstance(info, dict) else None,
        log_level=level,
    )


def validate_request(method: str, version: str, params: dict[str, Any] | None) -> None:
    """Validate params against the schema of `version`.

    A method the revision does not define is METHOD_NOT_FOUND (e.g. `ping`
    at 2026-07-28); a shape error is INVALID_PARAMS naming the fields,
    never echoing their values (a megabyte argument stays out of the reply).
    """
    try:
        mcp_methods.validate_client_request(method, version, params)
    except KeyError:
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method!r} is not defined at protocol version {version}",
                       method) from None
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(part) for part in err["loc"][1:]) or "params", "problem": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)[:8]
        ]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        raise RpcError(INVALID_PARAMS, f"Invalid params for {method}: {summary}", {"errors": problems}) from None


@cache
def has_feature(version: str, feature: str) -> bool:
    """Whether results at `version` may carry `feature` (modern versions carry all of them)."""
    return is_version_at_least(version, _FEATURE_SINCE[feature])


def log_level_enabled(threshold: str | None, level: str) -> bool:
    """Whether a message at `level` passes a client's chosen `threshold` (None = no logs)."""
    if threshold is None:
        return False
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def shape_result(method: str, version: str, result: dict[str, Any], server_info: dict[str, Any]) -> dict[str, Any]:
    """Fit a result to the schema of the version that asked for it.

    The per-version surface sieve drops fields the revision does not define
    (cache hints and `resultType` before 2026) and rejects a malformed result
    as a server bug. Fields newer than the negotiated handshake revision are
    dropped too. Modern results always carry `resultType` and are stamped
    with the server identity, as 2026-07-28 asks. (`tools/call` results are
    built to their version's shape directly; see `transports.mcp.tool_results`.)
    """
    shaped = mcp_methods.serialize_server_result(method, version, result)
    if version in MODERN_VERSIONS:
        return stamp_modern(shaped, server_info)
    if method == "tools/list":
        for tool in shaped.get("tools", []):
            if not has_feature(version, "tool_annotations"):
                tool.pop("annotations", None)
            if not has_feature(version, "tool_title"):
                tool.pop("title", None)
            if not has_feature(version, "output_schema"):
                tool.pop("outputSchema", None)
            if not has_feature(version, "tasks"):
                tool.pop("execution", None)
    return shaped


def stamp_modern(result: dict[str, Any], server_info: dict[str, Any]) -> dict[str, Any]:
    """Mark a 2026-07-28 result complete and sign it with the server identity, as that revision asks."""
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), SERVER_INFO_META_KEY: dict(server_info)}
    return result
