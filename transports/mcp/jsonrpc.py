"""JSON-RPC 2.0 envelopes: decoding untrusted text, classifying it, building replies.

Every message becomes a request, a notification, a response, or a typed `RpcError` that already
knows which code and id its reply carries, so no transport decides what "garbage" means on its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC_VERSION,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    RequestId,
)

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Notification",
    "Request",
    "Response",
    "RpcError",
    "classify",
    "decode",
    "encode",
    "error_response",
    "notification",
    "request_key",
    "result_response",
]


class RpcError(Exception):
    """A failure that must be answered with a JSON-RPC error object.

    `request_id` is the id the reply carries: the offending request's id when
    it could be read, otherwise `None` (serialized as `"id": null`, which is
    what JSON-RPC prescribes for parse errors and unreadable requests).
    """

    def __init__(self, code: int, message: str, data: Any = None, *, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id

    def response(self, request_id: RequestId | None = None) -> dict[str, Any]:
        rid = request_id if request_id is not None else self.request_id
        return error_response(rid, self.code, self.message, self.data)


@dataclass(frozen=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any] | None


@dataclass(frozen=True)
class Notification:
    method: str
    params: dict[str, Any] | None


@dataclass(frozen=True)
class Response:
    """A reply from the peer. This server never asks the client anything, so these are only logged."""

    id: RequestId | None
    is_error: bool


Message = Request | Notification | Response


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]!r} is out of range")
    return value


def decode(data: str | bytes) -> Any:
    """Parse one JSON text; any failure is a PARSE_ERROR with a short reason.

    Stricter than `json.loads`: no `NaN`/`Infinity`, no non-finite numbers, no invalid UTF-8, and
    nesting deep enough to blow the recursion limit is a parse error rather than a crash.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, "Parse error: message is not valid UTF-8", {"offset": exc.start}) from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise RpcError(PARSE_ERROR, "Parse error: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RpcError(
            PARSE_ERROR, f"Parse error: {exc.msg}", {"line": exc.lineno, "column": exc.colno}
        ) from None
    except ValueError as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None


def _valid_id(value: Any) -> TypeGuard[RequestId]:
    return isinstance(value, str | int) and not isinstance(value, bool)


def classify(obj: Any) -> Message:
    """Decide what a decoded JSON value is, or raise the INVALID_REQUEST it deserves.

    Params are only checked for being an object (or absent); their contents
    belong to the method. `"params": null` is read as absent.
    """
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, f"Invalid Request: expected a JSON object, got {_json_type(obj)}")
    raw_id = obj.get("id")
    request_id = raw_id if _valid_id(raw_id) else None
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id=request_id)
    if "method" not in obj:
        if "id" in obj and ("result" in obj or "error" in obj):
            return Response(id=request_id, is_error="error" in obj)
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "method" is missing', request_id=request_id)
    method = obj["method"]
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string', request_id=request_id)
    params = obj.get("params")
    if "id" not in obj:
        if params is not None and not isinstance(params, dict):
            # A notification never gets a reply, even a malformed one; callers log it.
            return Notification(method=method, params=None)
        return Notification(method=method, params=params)
    if not _valid_id(raw_id):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    if params is not None and not isinstance(params, dict):
        raise RpcError(
            INVALID_PARAMS,
            f'Invalid params: "params" must be an object, got {_json_type(params)}',
            request_id=raw_id,
        )
    return Request(id=raw_id, method=method, params=params)


def request_key(request_id: RequestId) -> str:
    """Correlation key for an id: 7 and "7" name the same request, as peers stringify ids."""
    if isinstance(request_id, str):
        try:
            return str(int(request_id))
        except ValueError:
            return "s:" + request_id
    return str(request_id)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def result_response(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    """A success reply; the id is one `classify` accepted and the result one the server built, so no model is needed."""
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "result": result}


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    dumped = JSONRPCError(
        jsonrpc=JSONRPC_VERSION, id=request_id, error=ErrorData(code=code, message=message, data=data)
    ).model_dump(mode="json")
    if data is None:
        dumped["error"].pop("data", None)
    return dumped


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return JSONRPCNotification(jsonrpc=JSONRPC_VERSION, method=method, params=params).model_dump(
        mode="json", exclude_none=True
    )


def encode(message: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """One message (or batch reply) as a single ASCII line without the trailing newline."""
    return json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
