"""Turning a finished process into the answer for its call.

Pure: from the prepared call, the tool spec and what the runner saw, decide
the envelope and whether the run counts for or against the tool's breaker.
Parsing happens here, on the runner's thread, so a 1 MiB nmap document never
occupies the actor's mailbox.
"""

from __future__ import annotations

import signal
from enum import Enum
from typing import Any

from actors.prepare import PreparedCall
from actors.results import NODE_LOST_RETRY_SEC, CallOutcome, ErrorType
from actors.runner import RunResult
from actors.tools.base import ToolSpec

STDERR_TAIL_CHARS = 4000


class Verdict(Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # counts against the breaker
    NEUTRAL = "neutral"  # says nothing about the tool's health


def outcome_from_run(
    spec: ToolSpec, call_id: str, prepared: PreparedCall, run: RunResult
) -> tuple[CallOutcome, Verdict]:
    fields: dict[str, Any] = {
        "target": prepared.target,
        "resolved_targets": list(prepared.resolved_targets),
        "argv": list(run.argv or prepared.argv),  # a node runs what it built, which a reload may have changed
        "returncode": run.returncode,
        "duration_sec": round(run.duration_sec, 6),
        "timed_out": run.timed_out,
        "stdout_truncated": run.stdout_truncated,
        "stderr_truncated": run.stderr_truncated,
        "stderr": run.stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:],
    }
    tool = prepared.tool
    fields["pool"], fields["node"] = run.pool, run.node
    if run.refused is not None:
        message = f"the scanner node refused the call: {run.refused}"
        return CallOutcome.failure(tool, call_id, ErrorType.VALIDATION, message, **fields), Verdict.NEUTRAL
    if run.lost is not None:
        message = f"the scanner node was lost: {run.lost}" if run.runner_died else run.lost
        retry = NODE_LOST_RETRY_SEC
        outcome = CallOutcome.failure(tool, call_id, ErrorType.NODE_LOST, message, retry_after_sec=retry, **fields)
        return outcome, Verdict.NEUTRAL
    if run.spawn_error is not None:
        message = f"could not start {prepared.argv[0]}: {run.spawn_error}"
        fields["spawn_errno"] = run.spawn_errno
        return CallOutcome.failure(tool, call_id, ErrorType.EXECUTION, message, **fields), Verdict.FAILURE
    result, parse_error = _parse(spec, run)
    fields["result"] = result
    fields["raw_output"] = run.stdout.decode("utf-8", "replace")
    if run.cancelled:
        message = "the call was cancelled"
        return CallOutcome.failure(tool, call_id, ErrorType.CANCELLED, message, **fields), Verdict.NEUTRAL
    if run.timed_out:
        message = (
            f"{tool} did not finish within {prepared.timeout_sec:g}s and was stopped; partial results are included"
        )
        return CallOutcome.failure(tool, call_id, ErrorType.TIMEOUT, message, **fields), Verdict.FAILURE
    if run.signal is not None:
        message = f"{tool} was killed by {_signal_name(run.signal)}"
        return CallOutcome.failure(tool, call_id, ErrorType.EXECUTION, message, **fields), Verdict.FAILURE
    if run.returncode != 0:
        message = f"{tool} exited with status {run.returncode}"
        tail = fields["stderr"].strip().splitlines()[-1:] if fields["stderr"].strip() else []
        if tail:
            message += f": {tail[0][:300]}"
        return CallOutcome.failure(tool, call_id, ErrorType.EXECUTION, message, **fields), Verdict.FAILURE
    if parse_error is not None and not run.stdout_truncated:
        message = f"{tool} output could not be read: {parse_error}"
        return CallOutcome.failure(tool, call_id, ErrorType.EXECUTION, message, **fields), Verdict.FAILURE
    return CallOutcome(tool=tool, call_id=call_id, ok=True, **fields), Verdict.SUCCESS


def _parse(spec: ToolSpec, run: RunResult) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return spec.parse(run.stdout, truncated=run.stdout_truncated or run.timed_out or run.cancelled), None
    except Exception as exc:  # noqa: BLE001 - a parser must never take the answer down with it
        return None, f"{type(exc).__name__}: {exc}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
