"""Random sequences of reloads, tool switches and calls never lose a call nor answer one twice."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.api import StartedScan
from supervisor import Runtime
from tests.fakes.install import install_fake
from tests.runtimes import fake_config

TOOLS = ("nmap", "gobuster")
ARGUMENTS = {"nmap": {"target": "10.0.0.7", "ports": "22"}, "gobuster": {"target": "10.0.0.7"}}
# Answers a switch or a reload may legitimately give a call; anything else is a lost or broken call.
EXPECTED = {None, "tool_disabled", "cancelled"}

steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from(TOOLS)),
        st.tuples(st.just("disable"), st.sampled_from(TOOLS)),
        st.tuples(st.just("enable"), st.sampled_from(TOOLS)),
        st.tuples(
            st.just("reload"),
            st.fixed_dictionaries(
                {"concurrency": st.integers(1, 3), "binary": st.sampled_from(("a", "b")), "enabled": st.booleans()}
            ),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_calls_are_answered_exactly_once_whatever_reloads_and_switches_come_between(tmp_path_factory, steps):
    directory = tmp_path_factory.mktemp("reloads")
    audit = directory / "audit.jsonl"
    slow = {"mode": "slow", "delay_sec": 0.05, "steps": 1}
    binaries = {
        variant: {tool: str(install_fake(directory / variant, tool, **slow)) for tool in TOOLS} for variant in "ab"
    }
    config = fake_config(
        directory,
        tools={tool: {"binary": binaries["a"][tool], "max_queue": 100} for tool in TOOLS},
        logging={"audit_path": str(audit)},
        reload={"drain_sec": 30},
    )
    with Runtime.start(config) as runtime:
        started = asyncio.run(play(runtime, config, binaries, steps))
    answers = [json.loads(line) for line in audit.read_text().splitlines()]
    answered = [line["call_id"] for line in answers if line["event"] == "call_answered"]
    assert sorted(answered) == sorted(scan.call_id for scan, _ in started)  # each exactly once
    for scan, outcome in started:
        assert outcome.call_id == scan.call_id
        assert (outcome.error.error_type.value if outcome.error else None) in EXPECTED, outcome.error


async def play(
    runtime: Runtime, config: dict[str, Any], binaries: dict[str, dict[str, str]], steps: list[tuple[str, Any]]
) -> list[tuple[StartedScan, Any]]:
    started: list[StartedScan] = []
    for kind, value in steps:
        if kind == "call":
            started.append(await runtime.astart(value, ARGUMENTS[value]))
        elif kind == "disable":
            await asyncio.to_thread(runtime.disable_tool, value, "a test")
        elif kind == "enable":
            await asyncio.to_thread(runtime.enable_tool, value)
        else:
            await asyncio.to_thread(runtime.reload, reloaded(config, binaries, value))
    outcomes = await asyncio.wait_for(asyncio.gather(*(scan.outcome for scan in started)), timeout=60)
    return list(zip(started, outcomes, strict=True))


def reloaded(config: dict[str, Any], binaries: dict[str, dict[str, str]], change: dict[str, Any]) -> dict[str, Any]:
    """`config` with nmap's concurrency and both binaries from `change`, and gobuster on or off."""
    new = copy.deepcopy(config)
    new["tools"]["nmap"]["concurrency"] = change["concurrency"]
    for tool in TOOLS:
        new["tools"][tool]["binary"] = binaries[change["binary"]][tool]
    new["tools"]["gobuster"]["enabled"] = change["enabled"]
    return new



