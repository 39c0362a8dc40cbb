"""What a scan is: its id, its owner, where it stands, and how a finished call's outcome maps to a status.

A scan is created `working` when its call is admitted (or already finished, when the call was refused)
and reaches exactly one of `completed`, `failed` or `cancelled`, which it never leaves. Ids carry 128
random bits: knowing one scan's id says nothing about another's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from actors.results import CallOutcome, ErrorType

__all__ = [
    "INTERRUPTED",
    "ScanNotFound",
    "ScanRecord",
    "ScanStatus",
    "iso",
    "new_scan_id",
    "scan_subject",
    "settled_fields",
    "status_of",
]

INTERRUPTED = "interrupted"
"""The error type of a scan that was running when its daemon stopped or died."""


class ScanStatus(StrEnum):
    WORKING = "working"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not ScanStatus.WORKING


class ScanNotFound(LookupError):
    """No scan with this id is visible to this caller: unknown, expired, or someone else's (one answer for all)."""

    def __init__(self, scan_id: str) -> None:
        shown = scan_id if len(scan_id) <= 64 else scan_id[:64] + "..."
        super().__init__(f"no scan {shown!r}: unknown, expired, or not yours")
        self.scan_id = scan_id


def new_scan_id() -> str:
    """32 hex digits, 128 bits from the OS's random source."""
    return secrets.token_hex(16)


def status_of(outcome: CallOutcome) -> ScanStatus:
    if outcome.ok:
        return ScanStatus.COMPLETED
    if outcome.error_type is ErrorType.CANCELLED:
        return ScanStatus.CANCELLED
    return ScanStatus.FAILED


def settled_fields(outcome: CallOutcome) -> dict[str, Any]:
    """What a scan's record takes from the outcome it settled with: its status and its error."""
    error = outcome.error
    return {
        "status": status_of(outcome),
        "error_type": error.error_type.value if error is not None else None,
        "error": error.message if error is not None else None,
    }


@dataclass(frozen=True)
class ScanRecord:
    """One scan as the store keeps it (without its full outcome and raw output, which are read on demand)."""

    scan_id: str
    owner: str
    tool: str
    call_id: str
    status: ScanStatus
    created_at: float  # seconds since the epoch
    updated_at: float
    arguments: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    resolved_targets: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    progress: float | None = None  # percent, 0-100
    progress_message: str | None = None
    error_type: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as operators and clients see it (times as ISO 8601)."""
        return {
            "scan_id": self.scan_id,
            "owner": self.owner,
            "tool": self.tool,
            "status": self.status.value,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "arguments": self.arguments,
            "target": self.target,
            "resolved_targets": list(self.resolved_targets),
            "argv": list(self.argv),
            "progress": self.progress,
            "progress_message": self.progress_message,
            "error_type": self.error_type,
            "error": self.error,
        }


def scan_subject(tool: str, target: str | None) -> str:
    """How an answer names a scan to a model: the tool, and its target when it has one."""
    return f"{tool} {target}" if target else tool


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
