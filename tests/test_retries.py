"""Transient failures are tried again inside the call: the decision, and a call's life through the runtime and MCP.

Only fake scanners run (tests/fakes); waits are on observable state (replies, metrics, the fakes'
call records), never on sleeps.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.api import Caller
from actors.prepare import PreparedCall
from actors.reply import Reply, ThreadReply
from actors.results import CallOutcome, ErrorType, RetriedAttempt
from actors.settings import RetrySettings
from actors.tool import Call
from supervisor.retrier import Retrier
from supervisor.retries import MAX_BACKOFF_SEC, RetryReason, next_retry, transient_reason, with_retries
from tests.fakes.install import install_fake
from tests.helpers import wait_until
from tests.runtimes import scan_calls

NMAP = {"target": "10.0.0.5"}
MASSCAN = {"target": "10.0.0.5", "ports": "80"}
CRASH_ONCE = [{"tool": "nmap", "kind": "crash", "count": 1}]


def failed(error_type: ErrorType, message: str = "it failed", **fields) -> CallOutcome:
    return CallOutcome.failure("nmap", "c1", error_type, message, **fields)


def retry_after(outcome: CallOutcome, retries_done: int = 0, spread: float = 0.0, **settings) -> float | None:
    retry = next_retry(outcome, retries_done=retries_done, settings=RetrySettings(**settings), spread=spread)
    return None if retry is None else retry.delay_sec


# --- the decision -------------------------------------------------------------------------------


def test_an_actor_restart_and_a_temporary_spawn_error_are_transient():
    assert transient_reason(failed(ErrorType.ACTOR_RESTARTED)) is RetryReason.ACTOR_RESTARTED
    for number in (errno.EAGAIN, errno.ENOMEM, errno.ENFILE, errno.EMFILE, errno.ETXTBSY, errno.EINTR):
        spawn_failed = failed(ErrorType.EXECUTION, "could not start nmap", spawn_errno=number)
        assert transient_reason(spawn_failed) is RetryReason.SPAWN_ERROR, errno.errorcode[number]


def test_a_missing_or_unusable_binary_is_not_transient():
    for number in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, None):
        assert transient_reason(failed(ErrorType.EXECUTION, "could not start nmap", spawn_errno=number)) is None


def test_a_scan_that_ran_and_every_refusal_are_answered_as_they_are():
    for error_type in ErrorType:
        if error_type is not ErrorType.ACTOR_RESTARTED:
            assert transient_reason(failed(error_type)) is None, error_type
    assert transient_reason(CallOutcome(tool="nmap", call_id="c1", ok=True)) is None


def test_the_wait_doubles_with_each_retry_and_stops_at_the_configured_attempts():
    restarted = failed(ErrorType.ACTOR_RESTARTED)
    assert retry_after(restarted, 0, attempts=3, backoff_sec=0.5) == 0.5
    assert retry_after(restarted, 1, attempts=3, backoff_sec=0.5) == 1.0
    assert retry_after(restarted, 2, attempts=3, backoff_sec=0.5) == 2.0
    assert retry_after(restarted, 3, attempts=3, backoff_sec=0.5) is None
    assert retry_after(restarted, 2, attempts=3, backoff_sec=20) == MAX_BACKOFF_SEC


def test_attempts_zero_turns_retries_off():
    assert retry_after(failed(ErrorType.ACTOR_RESTARTED), attempts=0) is None


def test_the_jitter_moves_the_wait_by_a_tenth_at_most():
    restarted = failed(ErrorType.ACTOR_RESTARTED)
    assert retry_after(restarted, spread=1.0, backoff_sec=1.0) == pytest.approx(1.1)
    assert retry_after(restarted, spread=-1.0, backoff_sec=1.0) == pytest.approx(0.9)
    assert retry_after(restarted, spread=-1.0, backoff_sec=0.0) == 0.0


def test_the_answer_says_how_many_attempts_were_made_and_how_the_earlier_ended():
    ok = CallOutcome(tool="nmap", call_id="c1", ok=True)
    assert with_retries(ok, 1, []) is ok
    earlier = [RetriedAttempt(error_type=ErrorType.ACTOR_RESTARTED, message="nmap crashed")]
    answer = with_retries(ok, 2, earlier)
    assert (answer.attempts, answer.retried) == (2, earlier)
    assert answer.model_dump(mode="json")["retried"] == [{"error_type": "actor_restarted", "message": "nmap crashed"}]


def test_retry_settings_are_bounded():
    for bad in ({"attempts": 4}, {"attempts": -1}, {"backoff_sec": 31}, {"backoff_sec": -1}):
        with pytest.raises(ValueError):
            RetrySettings(**bad)


# --- through the runtime ----------------------------------------------------------------------


def sample(runtime, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(selector)}}} (\S+)$", runtime.metrics_text(), re.M)
    assert match, f"{name}{{{selector}}} missing"
    return float(match.group(1))


def retries(runtime, reason: str, tool: str = "nmap") -> float:
    return sample(runtime, "labrecon_call_retries_total", reason=reason, pool="local", tool=tool)


def test_a_call_whose_actor_crashes_is_tried_again_and_says_so(make_runtime, tmp_path):
    audit = tmp_path / "audit.jsonl"
    runtime = make_runtime(
        tools={"nmap": {"retry": {"backoff_sec": 0}}}, faults=CRASH_ONCE, logging={"audit_path": str(audit)}
    )

    async def scan():
        started = await runtime.astart("nmap", NMAP)
        return started.scan_id, await asyncio.wait_for(started.outcome, 30)

    scan_id, outcome = asyncio.run(scan())
    assert outcome.ok, outcome.error
    assert outcome.attempts == 2
    assert [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]
    assert "crashed while the call ran" in outcome.retried[0].message
    assert len(scan_calls(runtime.settings.tools.nmap.binary)) == 1  # the crash came before any process
    # The metrics count the retry, and each attempt's answer.
    assert retries(runtime, "actor_restarted") == 1 and retries(runtime, "spawn_error") == 0
    assert runtime.status().tools["nmap"].retries == {"actor_restarted": 1}
    assert sample(runtime, "labrecon_tool_calls_total", outcome="actor_restarted", pool="local", tool="nmap") == 1
    assert sample(runtime, "labrecon_tool_calls_total", outcome="ok", pool="local", tool="nmap") == 1
    # The scan store keeps the answer as it was given.
    stored = runtime.scans.outcome(Caller.local(), scan_id)
    assert stored is not None and stored.attempts == 2 and stored.retried == outcome.retried
    runtime.stop()
    (line,) = [json.loads(line) for line in audit.read_text().splitlines() if '"call_answered"' in line]
    assert line["outcome"] == "ok" and line["attempts"] == 2
    assert line["retried"] == [{"error_type": "actor_restarted", "message": outcome.retried[0].message}]


def test_a_call_that_crashes_its_actor_again_gets_the_second_actor_restarted(make_runtime):
    runtime = make_runtime(
        tools={"nmap": {"retry": {"attempts": 1, "backoff_sec": 0}}},
        faults=[{"tool": "nmap", "kind": "crash", "count": 2}],
    )
    outcome = runtime.call("nmap", NMAP, timeout=30)
    assert outcome.error_type is ErrorType.ACTOR_RESTARTED
    assert outcome.attempts == 2 and [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]
    assert retries(runtime, "actor_restarted") == 1
    assert sample(runtime, "labrecon_tool_calls_total", outcome="actor_restarted", pool="local", tool="nmap") == 2
    assert runtime.call("nmap", NMAP, timeout=30).ok  # the faults are spent; the tool serves


def test_retries_off_answers_the_first_actor_restarted(make_runtime):
    runtime = make_runtime(tools={"nmap": {"retry": {"attempts": 0}}}, faults=CRASH_ONCE)
    outcome = runtime.call("nmap", NMAP, timeout=30)
    assert outcome.error_type is ErrorType.ACTOR_RESTARTED
    assert outcome.attempts == 1 and outcome.retried == []
    assert retries(runtime, "actor_restarted") == 0


def test_a_binary_being_written_is_tried_again_once_it_is_done(make_runtime, tmp_path):
    """Executing a file open for writing fails with ETXTBSY, as it does while a package upgrade writes it."""
    fake = install_fake(tmp_path / "bin", "masscan")
    upgrading = tmp_path / "bin" / "masscan-upgrading"
    upgrading.write_text(f'#!/bin/sh\nexec "{fake}" "$@"\n')
    upgrading.chmod(0o755)
    # Up to three retries a second, two and four seconds apart: the write ends after the first failure is seen.
    runtime = make_runtime(
        tools={"masscan": {"binary": str(upgrading), "retry": {"attempts": 3, "backoff_sec": 1.0}}}
    )
    writer = os.open(upgrading, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(runtime.call, "masscan", MASSCAN, 60)
            wait_until(lambda: retries(runtime, "spawn_error", "masscan") >= 1, what="the first spawn error")
            os.close(writer)
            writer = -1
            outcome = call.result(60)
    finally:
        if writer >= 0:
            os.close(writer)
    assert outcome.ok, outcome.error
    assert outcome.attempts >= 2 and len(outcome.retried) == outcome.attempts - 1
    assert {r.error_type for r in outcome.retried} == {ErrorType.EXECUTION}
    assert all("Text file busy" in r.message for r in outcome.retried)
    assert len(scan_calls(fake)) == 1
    assert retries(runtime, "spawn_error", "masscan") == outcome.attempts - 1


def test_a_missing_binary_is_not_tried_again(make_runtime, tmp_path):
    missing = str(tmp_path / "no-such-masscan")
    runtime = make_runtime(tools={"masscan": {"binary": missing, "retry": {"backoff_sec": 0}}})
    outcome = runtime.call("masscan", MASSCAN, timeout=30)
    assert outcome.error_type is ErrorType.EXECUTION and "No such file" in outcome.error.message
    assert outcome.attempts == 1 and outcome.retried == []
    assert retries(runtime, "spawn_error", "masscan") == 0


def test_a_scan_that_ran_and_failed_is_not_tried_again(make_runtime):
    runtime = make_runtime(tools={"nmap": {"retry": {"backoff_sec": 0}, "scenario": {"mode": "fail"}}})
    outcome = runtime.call("nmap", NMAP, timeout=30)
    assert outcome.error_type is ErrorType.EXECUTION and outcome.returncode not in (0, None)
    assert outcome.attempts == 1 and outcome.retried == []
    assert len(scan_calls(runtime.settings.tools.nmap.binary)) == 1
    assert retries(runtime, "spawn_error") == retries(runtime, "actor_restarted") == 0


def waiting_to_retry(runtime, pool: ThreadPoolExecutor, call_id: str):
    """A call whose first attempt crashed its actor, waiting (for half a minute) to be tried again."""
    call = pool.submit(runtime.call, "nmap", NMAP, 60, call_id=call_id)
    wait_until(lambda: retries(runtime, "actor_restarted") == 1, what="the retry arranged")
    assert not call.done()
    return call


def test_cancelling_a_call_waiting_to_be_retried_answers_it_at_once_and_runs_nothing(make_runtime):
    runtime = make_runtime(tools={"nmap": {"retry": {"backoff_sec": 30}}}, faults=CRASH_ONCE)
    with ThreadPoolExecutor(1) as pool:
        call = waiting_to_retry(runtime, pool, "waiting")
        assert runtime.cancel("waiting")
        outcome = call.result(10)  # well before the half-minute wait would be over
    assert outcome.error_type is ErrorType.CANCELLED and "waited to be tried again" in outcome.error.message
    assert outcome.attempts == 1 and [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]
    assert sample(runtime, "labrecon_tool_calls_total", outcome="cancelled", pool="local", tool="nmap") == 1
    nmap = runtime.status().tools["nmap"]
    assert (nmap.in_flight, nmap.queued, nmap.stashed) == (0, 0, 0)
    assert not runtime.cancel("waiting")
    # Its id is free again, and the only process that ever ran is the next call's.
    assert runtime.call("nmap", NMAP, 30, call_id="waiting").attempts == 1
    assert len(scan_calls(runtime.settings.tools.nmap.binary)) == 1


def test_a_runtime_stopping_answers_a_call_waiting_to_be_retried(make_runtime):
    runtime = make_runtime(tools={"nmap": {"retry": {"backoff_sec": 30}}}, faults=CRASH_ONCE)
    with ThreadPoolExecutor(1) as pool:
        call = waiting_to_retry(runtime, pool, "waiting")
        runtime.stop(grace=2.0)
        outcome = call.result(10)
    assert outcome.error_type is ErrorType.CANCELLED and outcome.error.message == "the runtime is stopping"
    assert outcome.attempts == 1 and [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]
    assert scan_calls(runtime.settings.tools.nmap.binary) == []


def test_disabling_a_tool_answers_its_calls_waiting_to_be_retried_at_once(make_runtime):
    runtime = make_runtime(tools={"nmap": {"retry": {"backoff_sec": 30}}}, faults=CRASH_ONCE)
    with ThreadPoolExecutor(1) as pool:
        call = waiting_to_retry(runtime, pool, "waiting")
        runtime.disable_tool("nmap", "patching")
        outcome = call.result(10)  # well before the half-minute wait would be over
    assert outcome.error_type is ErrorType.TOOL_DISABLED and "patching" in outcome.error.message
    assert outcome.attempts == 1 and [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]
    assert scan_calls(runtime.settings.tools.nmap.binary) == []


def test_a_retried_call_can_still_be_cancelled_while_it_runs(make_runtime, tmp_path):
    release = tmp_path / "release"
    runtime = make_runtime(
        tools={"nmap": {"retry": {"backoff_sec": 0}, "scenario": {"mode": "block", "release_file": str(release)}}},
        faults=CRASH_ONCE,
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(runtime.call, "nmap", NMAP, 60, call_id="second")
            wait_until(lambda: len(scan_calls(runtime.settings.tools.nmap.binary)) == 1, what="the retry running")
            assert runtime.cancel("second")
            outcome = call.result(30)
    finally:
        release.touch()
    assert outcome.error_type is ErrorType.CANCELLED
    assert outcome.attempts == 2 and [r.error_type for r in outcome.retried] == [ErrorType.ACTOR_RESTARTED]


# --- through MCP -----------------------------------------------------------------------------------


def test_an_mcp_client_over_stdio_reads_that_its_call_was_retried(tmp_path):
    from mcp import Client

    from tests.test_mcp_stdio_e2e import server

    lines = ["[policy]", "dns = false"]
    for tool in ("nmap", "masscan", "gobuster"):
        lines += [f"[tools.{tool}]", f'binary = "{install_fake(tmp_path / "bin", tool)}"']
    lines += ["[tools.masscan.retry]", "backoff_sec = 0"]
    lines += ["[[faults]]", 'tool = "masscan"', 'kind = "crash"', "count = 1"]
    config = tmp_path / "labrecon.toml"
    config.write_text("\n".join(lines) + "\n")

    async def scenario():
        async with Client(server(config)) as client:  # it checks the result against the tool's output schema
            return await client.call_tool("masscan", {"target": "10.0.0.5", "ports": "80"})

    result = asyncio.run(scenario())
    assert not result.is_error, result.content
    assert result.structured_content["attempts"] == 2
    (earlier,) = result.structured_content["retried"]
    assert earlier["error_type"] == "actor_restarted" and "crashed" in earlier["message"]
    assert "2 attempts made; transient failures before this answer: actor_restarted." in result.content[0].text


def test_a_call_cancelled_while_an_attempt_fails_transiently_is_answered_cancelled_not_retried():
    submitted: list[Call] = []
    retrier = Retrier(submitted.append, on_retry=lambda tool, reason: None, on_refused=lambda tool, error: None)
    prepared = PreparedCall("nmap", "10.0.0.5", ("10.0.0.5",), ("nmap", "10.0.0.5"), 30.0)

    def attempt(reply: Reply[CallOutcome], number: int) -> Call:
        return Call(call_id="c1", prepared=prepared, reply=reply)

    caller: ThreadReply[CallOutcome] = ThreadReply()
    retrier.submit("c1", "nmap", RetrySettings(attempts=1, backoff_sec=0), attempt, caller)
    assert retrier.cancel("c1") is False  # an attempt is under way: it is cancelled where it runs
    (first,) = submitted
    first.reply.resolve(first.failure(ErrorType.ACTOR_RESTARTED, "nmap crashed while the call ran"))
    answer = caller.wait(5)
    assert answer.error is not None and answer.error.error_type is ErrorType.CANCELLED
    assert len(submitted) == 1 and answer.attempts == 1
