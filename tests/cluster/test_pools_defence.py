"""Defence in depth: a front that skips its own checks still cannot make a scanner node spawn.

The calls here are made by hand and handed straight to the supervisor (as a front with a bug in its
policy or grammar would hand them), already routed to pool b. The node prepares each again from its
arguments and refuses every one that is not exactly what the grammar and the policy make of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from actors.prepare import PreparedCall, on_pool, prepare_call
from actors.reply import ThreadReply
from actors.results import CallOutcome
from actors.tool import Call
from actors.tools import TOOL_SPECS
from supervisor import Runtime
from tests.cluster.pools_support import HANG_GUARD_SEC, IN_A, IN_B, nmap_of, nodes_ran_on, pool_runtime
from tests.pool_support import retarget
from tests.runtimes import scan_calls


@pytest.fixture(scope="module")
def runtime(ray_cluster, tmp_path_factory) -> Iterator[Runtime]:
    with pool_runtime(tmp_path_factory.mktemp("defence"), ray_cluster) as started:
        yield started


def honest(runtime: Runtime, **arguments: Any) -> PreparedCall:
    """What the front prepares for nmap on `arguments`, routed to pool b."""
    nmap = runtime.settings.tools.nmap
    prepared = prepare_call(TOOL_SPECS["nmap"], {"target": IN_B, **arguments}, settings=nmap, policy=runtime.policy)
    return on_pool(prepared, "b", nmap, runtime.settings.policy)


def submit_unchecked(runtime: Runtime, prepared: PreparedCall) -> CallOutcome:
    """Hand `prepared` to its slot as it is, past the front's policy, grammar and routing; wait for the answer."""
    reply: ThreadReply[CallOutcome] = ThreadReply()
    runtime.supervisor.submit(Call(call_id=uuid.uuid4().hex, prepared=prepared, reply=reply))
    return reply.wait(HANG_GUARD_SEC)


def test_the_hook_reaches_the_node_a_call_made_by_hand_as_the_front_makes_it_runs_on_pool_b(ray_cluster, runtime):
    before = len(scan_calls(nmap_of(runtime)))
    outcome = submit_unchecked(runtime, honest(runtime, ports="22"))
    assert outcome.ok, outcome.error
    assert (outcome.pool, outcome.node) == ("b", ray_cluster.nodes["b"].node_id)
    assert nodes_ran_on(ray_cluster, nmap_of(runtime))[before:] == ["b"]


TAMPERED: dict[str, tuple[Callable[[PreparedCall], PreparedCall], str]] = {
    "a target outside the policy": (lambda p: retarget(p, "8.8.8.8"), "8.8.8.8 is not inside an allowed network"),
    "a target of another pool": (lambda p: retarget(p, IN_A), f"{IN_A}/32 is not in this node's pool"),
    "a forbidden option added to the argv": (
        lambda p: replace(p, argv=(*p.argv[:-1], "-iL", "/etc/passwd", p.argv[-1])),
        "the command line sent is not the one the tool's grammar builds",
    ),
    "a forbidden option in the arguments, the argv built with it": (
        lambda p: replace(
            p,
            arguments={**p.arguments, "extra_args": "-iL /etc/passwd"},
            argv=(*p.argv[:-1], "-iL", "/etc/passwd", p.argv[-1]),
        ),
        "-iL",
    ),
    "an argv other than the arguments build": (
        lambda p: replace(p, arguments={**p.arguments, "ports": "1-65535"}),
        "the command line sent is not the one the tool's grammar builds",
    ),
    "another binary": (
        lambda p: replace(p, argv=("/bin/sh", *p.argv[1:])),
        "the command line sent is not the one the tool's grammar builds",
    ),
    "a longer time limit than the call's": (
        lambda p: replace(p, timeout_sec=p.timeout_sec * 10),
        "the time limit sent is not the call's",
    ),
    "a time limit above the maximum, in the arguments too": (
        lambda p: replace(p, arguments={**p.arguments, "timeout_sec": 999_999}, timeout_sec=999_999.0),
        "timeout_sec 999999 is above the maximum",
    ),
}


@pytest.mark.parametrize("tampering", list(TAMPERED))
def test_a_call_the_front_did_not_check_is_refused_by_the_node_and_spawns_nothing(runtime, tampering):
    tamper, refusal = TAMPERED[tampering]
    before = scan_calls(nmap_of(runtime))
    outcome = submit_unchecked(runtime, tamper(honest(runtime, ports="22")))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.error_type == "validation", outcome.error
    assert outcome.error.message.startswith("the scanner node refused the call: "), outcome.error
    assert refusal in outcome.error.message, outcome.error
    assert outcome.pool == "b"
    assert scan_calls(nmap_of(runtime)) == before


def test_refusals_by_the_node_leave_pool_bs_breaker_closed_and_its_runner_serving(ray_cluster, runtime):
    for tamper, _ in TAMPERED.values():
        assert submit_unchecked(runtime, tamper(honest(runtime))).error_type == "validation"
    status = runtime.status().tools["nmap@b"]
    assert status.breaker.state == "closed" and status.restarts == 0
    assert submit_unchecked(runtime, honest(runtime)).ok
