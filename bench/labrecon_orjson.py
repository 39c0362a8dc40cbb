"""`labrecon` with orjson decoding and encoding JSON-RPC: a benchmark-only A/B, not a change to the product.

    .venv/bin/python bench/labrecon_orjson.py serve --config FILE [...]

The JSON-RPC module's `decode` and `encode` are replaced before the command
line runs; every transport reaches them through the module, so all of them
use orjson. orjson rejects NaN and Infinity as the module does; its output is
UTF-8 rather than ASCII-only, the same bytes for the benchmarks' messages.
"""

from __future__ import annotations

from typing import Any

import orjson

from transports.cli import main
from transports.mcp import jsonrpc


def decode(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise jsonrpc.RpcError(jsonrpc.PARSE_ERROR, f"Parse error: {exc}") from None


def encode(message: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    return orjson.dumps(message)


if __name__ == "__main__":
    jsonrpc.decode = decode
    jsonrpc.encode = encode
    main()
