"""What an MCP message sent over HTTP must carry, decided without any I/O.

Both HTTP transports check the same few things before a message reaches the dispatcher: the media
types the client reads, the protocol version its headers claim, whether a 2026-07-28 request's
routing headers repeat its body, and what a session id looks like. Pure, so read and tested in one place.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mcp_types import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    PARSE_ERROR,
    PROTOCOL_VERSION_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)

from transports.mcp import eras
from transports.mcp.jsonrpc import RpcError

__all__ = [
    "EVENT_STREAM",
    "JSON",
    "KNOWN_VERSIONS",
    "LAST_EVENT_ID_HEADER",
    "METHOD_HEADER",
    "NAME_HEADER",
    "SESSION_HEADER",
    "VERSION_HEADER",
    "Accepts",
    "accepts",
    "decode_header_value",
    "duplicated_routing_header",
    "is_initialize",
    "is_json_content",
    "is_modern_request",
    "is_session_id",
    "is_tool_call",
    "modern_header_problem",
    "new_session_id",
    "reply_status",
    "request_id_of",
    "resumable_at",
    "version_problem",
]

SESSION_HEADER: Final = "mcp-session-id"
VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"
LAST_EVENT_ID_HEADER: Final = "last-event-id"
_ROUTING_HEADERS: Final = frozenset({VERSION_HEADER, METHOD_HEADER, NAME_HEADER})
_TASK_ROUTED: Final = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
"""Requests the tasks extension routes by task: `Mcp-Name` carries `params.taskId`."""

JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"

KNOWN_VERSIONS: Final[tuple[str, ...]] = (*eras.HANDSHAKE_VERSIONS, *eras.MODERN_VERSIONS)

_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_B64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")

# The HTTP status a 2026-07-28 server gives a JSON-RPC error answered as plain JSON.
_MODERN_ERROR_STATUS: Final[Mapping[int, int]] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


# --- content negotiation ------------------------------------------------------------------


@dataclass(frozen=True)
class Accepts:
    """Which of the two response shapes the client said it can read."""

    json: bool
    event_stream: bool

    @property
    def anything(self) -> bool:
        return self.json or self.event_stream


def accepts(header: str | None) -> Accepts:
    """Read an `Accept` header: wildcards count, `q=0` excludes, absence accepts all."""
    if header is None or not header.strip():
        return Accepts(json=True, event_stream=True)
    wanted: set[str] = set()
    for item in header.split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        if not media or any(_is_q_zero(param) for param in params):
            continue
        wanted.add(media)
    anything = "*/*" in wanted
    return Accepts(
        json=anything or JSON in wanted or "application/*" in wanted,
        event_stream=anything or EVENT_STREAM in wanted or "text/*" in wanted,
    )


def _is_q_zero(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip() != "q":
        return False
    try:
        return float(value.strip()) == 0.0
    except ValueError:
        return False


def is_json_content(content_type: str | None) -> bool:
    """Whether a `Content-Type` says the body is JSON (parameters such as charset are ignored)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON


# --- versions and routing headers ----------------------------------------------------------


def version_problem(header: str | None) -> RpcError | None:
    """The error for a `MCP-Protocol-Version` header naming no version we speak (absent is fine)."""
    if header is None or header in KNOWN_VERSIONS:
        return None
    return eras.unsupported_version(header, KNOWN_VERSIONS)


def is_modern_request(message: Any) -> bool:
    """A single request object carrying the 2026-07-28 `_meta` envelope."""
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return False
    params = message.get("params")
    return isinstance(params, dict) and eras.is_enveloped(params)


def duplicated_routing_header(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """A routing header sent twice: first-copy and last-copy readers would disagree, so it is refused."""
    seen: set[str] = set()
    for raw_name, _ in raw_headers:
        name = raw_name.decode("latin-1").lower()
        if name in _ROUTING_HEADERS:
            if name in seen:
                return name
            seen.add(name)
    return None


def modern_header_problem(message: Any, headers: Mapping[str, str]) -> RpcError | None:
    """For an enveloped request: the routing headers must repeat the body (HEADER_MISMATCH otherwise).

    `MCP-Protocol-Version` must equal the envelope's version, `Mcp-Method`
    the method, for `tools/call` `Mcp-Name` the tool's name, and for the
    task requests (`tasks/get`, `tasks/update`, `tasks/cancel`) the task id.
    Requests without an envelope are left to the dispatcher, which names
    what is missing from the body.
    """
    if not is_modern_request(message):
        return None
    params: dict[str, Any] = message["params"]
    method = message["method"]
    if headers.get(VERSION_HEADER) != params["_meta"].get(PROTOCOL_VERSION_META_KEY):
        return RpcError(HEADER_MISMATCH, f"the {VERSION_HEADER} header does not match the request envelope's version")
    if headers.get(METHOD_HEADER) != method:
        return RpcError(HEADER_MISMATCH, f"the {METHOD_HEADER} header does not match the request body's method")
    name = params.get("name")
    if method == "tools/call" and isinstance(name, str) and decode_header_value(headers.get(NAME_HEADER)) != name:
        return RpcError(HEADER_MISMATCH, f"the {NAME_HEADER} header does not match the tool named in the body")
    task_id = params.get("taskId")
    if method in _TASK_ROUTED and isinstance(task_id, str) and decode_header_value(headers.get(NAME_HEADER)) != task_id:
        return RpcError(HEADER_MISMATCH, f"the {NAME_HEADER} header must carry params.taskId for {method}")
    return None


def decode_header_value(value: str | None) -> str | None:
    """A header value as sent, or the text inside its `=?base64?…?=` wrapping (None if that is corrupt)."""
    if value is None:
        return None
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


# --- message shapes -------------------------------------------------------------------------


def is_initialize(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "initialize" and "id" in message


def is_tool_call(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "tools/call" and "id" in message


def resumable_at(version: str | None) -> bool:
    """Whether a session that negotiated `version` gets resumable event streams (see the module notes)."""
    return version in eras.HANDSHAKE_VERSIONS and eras.has_feature(version, "resumable_streams")


def request_id_of(message: Any) -> str | int | None:
    """The id a reply to `message` would carry, when it has a usable one."""
    if isinstance(message, dict):
        rid = message.get("id")
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            return rid
    return None


def reply_status(reply: Any, *, modern: bool) -> int:
    """HTTP status for a reply sent as plain JSON (see the module notes)."""
    if modern and isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        return _MODERN_ERROR_STATUS.get(reply["error"].get("code"), 200)
    return 200


# --- sessions ------------------------------------------------------------------------------


def new_session_id() -> str:
    """128 random bits as 32 lowercase hex digits: unguessable, and safe in a header or a query."""
    return secrets.token_hex(16)


def is_session_id(text: str) -> bool:
    return _SESSION_ID.fullmatch(text) is not None
