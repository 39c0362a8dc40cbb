"""Logs as JSON lines on stderr, each stamped with the call it belongs to.

stdout may carry the protocol, so every record goes to stderr, one JSON object per line. The call id
travels in a context variable, so code inside a call's asyncio task is stamped without passing it
around; code on other threads passes `extra={"call_id": ...}`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonLineFormatter", "configure_logging", "correlation", "current_call_id"]

_CALL_ID: ContextVar[str | None] = ContextVar("labrecon_call_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_HANDLER_MARK = "_labrecon_json_handler"


def current_call_id() -> str | None:
    return _CALL_ID.get()


@contextmanager
def correlation(call_id: str | None) -> Iterator[None]:
    """Stamp every record logged inside the block (and tasks it starts) with `call_id`."""
    token = _CALL_ID.set(call_id)
    try:
        yield
    finally:
        _CALL_ID.reset(token)


class JsonLineFormatter(logging.Formatter):
    """One record, one line: JSON never contains a raw newline, so lines never split."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None) or _CALL_ID.get()
        if call_id:
            entry["call_id"] = call_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key != "call_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int | str = "INFO", *, stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to JSON lines on `stream` (stderr by default).

    Idempotent: a handler installed by an earlier call is replaced, so
    reconfiguring never duplicates lines.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
