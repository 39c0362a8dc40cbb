"""Whether a failed attempt at a call is tried again, and after how long: a pure decision over its answer.

Only a failure that says nothing about the scan is retried: the tool's actor died or was restarted
around the call (`actor_restarted`), or its process could not be started for a reason the OS calls
temporary. A process that started and failed, timed out or was cancelled, and every refusal, is
answered as it is. The supervisor layer decides, as it decides restarts (`restarts`): it owns the
actors whose deaths are retried; `retrier` carries the decision out.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import StrEnum

from actors.results import CallOutcome, ErrorType, RetriedAttempt
from actors.settings import RetrySettings

__all__ = [
    "TEMPORARY_SPAWN_ERRNOS",
    "Retry",
    "RetryReason",
    "next_retry",
    "retried_attempt",
    "transient_reason",
    "with_retries",
]

TEMPORARY_SPAWN_ERRNOS = frozenset(
    {
        errno.EAGAIN,  # fork hit the process limit, or the memory for a new process
        errno.ENOMEM,  # no memory for the new process
        errno.ENFILE,  # the system's open files are used up (the run's pipes)
        errno.EMFILE,  # this process's descriptors are used up
        errno.ETXTBSY,  # the binary is being written (an upgrade in progress)
        errno.EINTR,  # a signal interrupted the start
    }
)
"""Spawn errors that may be gone a moment later. A missing or unusable binary (ENOENT, EACCES, ENOEXEC) stays so."""

MAX_BACKOFF_SEC = 30.0
JITTER = 0.1  # the wait is spread by up to this fraction either way


class RetryReason(StrEnum):
    ACTOR_RESTARTED = "actor_restarted"
    SPAWN_ERROR = "spawn_error"


@dataclass(frozen=True)
class Retry:
    reason: RetryReason
    delay_sec: float


def transient_reason(outcome: CallOutcome) -> RetryReason | None:
    """Why this answer is worth another attempt, or None when it is the call's answer."""
    error = outcome.error
    if outcome.ok or error is None:
        return None
    if error.error_type is ErrorType.ACTOR_RESTARTED:
        return RetryReason.ACTOR_RESTARTED
    if error.error_type is ErrorType.EXECUTION and outcome.spawn_errno in TEMPORARY_SPAWN_ERRNOS:
        return RetryReason.SPAWN_ERROR
    return None


def next_retry(outcome: CallOutcome, *, retries_done: int, settings: RetrySettings, spread: float) -> Retry | None:
    """Another attempt after `outcome`, or None to answer with it.

    The wait doubles with each retry (never over `MAX_BACKOFF_SEC`); `spread`, drawn from [-1, 1]
    by the caller, moves it by up to `JITTER` of itself so retries of many calls do not move in step.
    """
    reason = transient_reason(outcome)
    if reason is None or retries_done >= settings.attempts:
        return None
    base = min(MAX_BACKOFF_SEC, settings.backoff_sec * 2**retries_done)
    spread = max(-1.0, min(1.0, spread))
    return Retry(reason, max(0.0, base * (1 + JITTER * spread)))


def retried_attempt(outcome: CallOutcome) -> RetriedAttempt:
    """How a retried attempt ended, as the call's answer lists it."""
    assert outcome.error is not None
    return RetriedAttempt(error_type=outcome.error.error_type, message=outcome.error.message)


def with_retries(outcome: CallOutcome, attempts: int, retried: list[RetriedAttempt]) -> CallOutcome:
    """The call's answer: `outcome`, saying how many attempts were made and how the retried ones ended."""
    if attempts == 1 and not retried:
        return outcome
    return outcome.model_copy(update={"attempts": attempts, "retried": list(retried)})
