"""The one envelope every tool call is answered with, and the error taxonomy.

Every accepted call ends in exactly one `CallOutcome`: either a finished run
(`ok=True`, or `ok=False` with an `execution`/`timeout` error when the tool
itself failed) or an error raised before anything ran. Clients and agents
branch on `error.error_type`, so the set of types is closed and each one
carries a recovery suggestion an LLM can act on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorType(StrEnum):
    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    EXECUTION = "execution"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    ACTOR_RESTARTED = "actor_restarted"
    TOOL_FAILED = "tool_failed"
    TOOL_DISABLED = "tool_disabled"
    NODE_LOST = "node_lost"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


RECOVERY: dict[ErrorType, str] = {
    ErrorType.VALIDATION: "Fix the arguments named in the message; the call was not run and may be resent corrected.",
    ErrorType.NOT_FOUND: "Check the tool or host name; list the tools to see what is available.",
    ErrorType.TIMEOUT: "Narrow the scan (fewer hosts or ports) or raise timeout_sec up to the configured maximum.",
    ErrorType.EXECUTION: "The tool ran and failed; read stderr in the result, adjust the arguments and retry.",
    ErrorType.RESOURCE_EXHAUSTED: "The tool is at capacity; retry after the suggested delay.",
    ErrorType.CIRCUIT_OPEN: "The tool failed repeatedly and is paused; retry after the suggested delay.",
    ErrorType.ACTOR_RESTARTED: "The tool's worker restarted while the call ran; it is safe to retry now.",
    ErrorType.TOOL_FAILED: "The tool exceeded its restart limit and is disabled until an operator resets it.",
    ErrorType.TOOL_DISABLED: "An operator has taken the tool out of service (the message says why); use another tool "
    "or try again later.",
    ErrorType.NODE_LOST: "The scanner node running the call, or every node of its pool, is gone; retry after the "
    "suggested delay, when the pool's runner is back.",
    ErrorType.CANCELLED: "The call was cancelled; resend it if the result is still wanted.",
    ErrorType.INTERNAL: "An internal error occurred; retry once, then report it with the correlation id.",
}

NODE_LOST_RETRY_SEC = 1.0
"""The retry hint of `node_lost`: a lost runner is restarted at once, a pool's node may take longer."""


class CallError(BaseModel):
    """Why a call did not produce a usable result."""

    model_config = ConfigDict(frozen=True)

    error_type: ErrorType
    message: str
    recovery_suggestion: str = ""
    retry_after_sec: float | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.recovery_suggestion:
            object.__setattr__(self, "recovery_suggestion", RECOVERY[self.error_type])


class RetriedAttempt(BaseModel):
    """An earlier attempt at a call that failed for a transient reason and was tried again."""

    model_config = ConfigDict(frozen=True)

    error_type: ErrorType
    message: str


def _absent(value: object) -> bool:
    return value is None


class CallOutcome(BaseModel):
    """The answer to one tool call, whatever happened to it."""

    tool: str
    call_id: str
    ok: bool
    target: str | None = None
    resolved_targets: list[str] = Field(default_factory=list)
    argv: list[str] = Field(default_factory=list)
    returncode: int | None = None
    duration_sec: float = 0.0
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stderr: str = ""
    result: dict[str, Any] | None = None
    error: CallError | None = None
    # How often the call was handed to its tool: more than once when a transient failure was retried.
    attempts: int = 1
    retried: list[RetriedAttempt] = Field(default_factory=list)  # how each earlier attempt ended, oldest first
    # Where the process ran: the scanner pool and its Ray node. A run on this machine has neither, and
    # its answer does not mention them.
    pool: str | None = Field(default=None, exclude_if=_absent)
    node: str | None = Field(default=None, exclude_if=_absent)
    # The tool's own output as captured (within the byte cap). Kept for the scan store, never sent:
    # `exclude` leaves it out of every dump, the wire envelope and its schema included.
    raw_output: str | None = Field(default=None, exclude=True)
    # The OS error number when the process could not be started; for deciding on a retry, never sent.
    spawn_errno: int | None = Field(default=None, exclude=True)

    @classmethod
    def failure(
        cls,
        tool: str,
        call_id: str,
        error_type: ErrorType,
        message: str,
        *,
        retry_after_sec: float | None = None,
        **fields: Any,
    ) -> CallOutcome:
        error = CallError(error_type=error_type, message=message, retry_after_sec=retry_after_sec)
        return cls(tool=tool, call_id=call_id, ok=False, error=error, **fields)

    @property
    def error_type(self) -> ErrorType | None:
        return self.error.error_type if self.error else None


class InvalidCall(ValueError):
    """Input that the policy or a tool's grammar refuses. Never reaches a process."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
