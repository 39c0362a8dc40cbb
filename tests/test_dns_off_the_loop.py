"""A slow DNS look-up holds up only its own call: `/livez`, other sessions and other calls carry on.

The daemon's resolver is a fake whose look-ups hang until the test releases
them; no name is ever looked up for real.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import httpx
import pytest

from tests.helpers import wait_until
from tests.http_support import binary, running_daemon, sdk_client
from tests.resolvers import HangingResolver
from tests.runtimes import scan_calls
from transports.cli import main

SLOW = "slow.lab.internal"


@pytest.fixture
def resolver():
    fake = HangingResolver({SLOW: "10.0.0.9"})
    yield fake
    fake.release()


def test_while_a_lookup_hangs_livez_and_another_session_are_served(make_runtime, resolver):
    runtime = make_runtime(policy={"dns": True, "dns_timeout_sec": 60}, resolver=resolver)
    with running_daemon(runtime) as daemon:

        async def scenario():
            async with sdk_client("auto", daemon.url) as slow_client, sdk_client("legacy", daemon.url) as other_client:
                slow_call = asyncio.create_task(slow_client.call_tool("nmap", {"target": SLOW}))
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: resolver.calls, what="the look-up"))
                async with httpx.AsyncClient(timeout=10) as http:
                    started = time.perf_counter()
                    livez = await http.get(daemon.url + "/livez")
                    livez_sec = time.perf_counter() - started
                other = await other_client.call_tool("nmap", {"target": "10.0.0.5"})
                still_looking_up = not slow_call.done()
                resolver.release()
                return livez, livez_sec, other, still_looking_up, await slow_call

        livez, livez_sec, other, still_looking_up, slow = asyncio.run(scenario())
    print(f"/livez answered in {livez_sec * 1000:.1f} ms while a look-up hung")
    assert livez.status_code == 200
    assert not other.is_error, other
    assert still_looking_up
    # Released within its deadline, the look-up's answer is used.
    assert not slow.is_error, slow
    assert slow.structured_content["resolved_targets"] == ["10.0.0.9"]
    assert [call["argv"][-1] for call in scan_calls(binary(runtime, "nmap"))] == ["10.0.0.5", "10.0.0.9"]


def test_a_lookup_past_its_deadline_fails_its_call_with_validation(make_runtime, resolver):
    runtime = make_runtime(policy={"dns": True, "dns_timeout_sec": 0.2}, resolver=resolver)
    with running_daemon(runtime) as daemon:

        async def scenario():
            async with sdk_client("auto", daemon.url) as client:
                timed_out = await client.call_tool("nmap", {"target": SLOW})
                served = await client.call_tool("nmap", {"target": "10.0.0.5"})
                return timed_out, served

        timed_out, served = asyncio.run(scenario())
    assert timed_out.is_error
    error = timed_out.structured_content["error"]
    assert error["error_type"] == "validation"
    assert "lookup timed out" in error["message"] and SLOW in error["message"]
    assert resolver.finished == []  # the call was answered while its look-up still hung
    assert not served.is_error, served
    assert [call["argv"][-1] for call in scan_calls(binary(runtime, "nmap"))] == ["10.0.0.5"]
    assert runtime.status().tools["nmap"].calls == {"validation": 1, "ok": 1}


def test_calls_that_need_no_lookup_never_wait_for_one(make_runtime, resolver):
    runtime = make_runtime(policy={"dns": True, "dns_timeout_sec": 60, "dns_concurrency": 1}, resolver=resolver)

    async def scenario():
        slow = asyncio.create_task(runtime.acall("nmap", {"target": SLOW}))
        await asyncio.to_thread(wait_until, lambda: resolver.calls, what="the look-up")
        by_address = await runtime.acall("nmap", {"target": "10.0.0.5"})
        by_static_name = await runtime.acall("gobuster", {"target": "web.lab.internal"})
        still_looking_up = not slow.done()
        resolver.release()
        return by_address, by_static_name, still_looking_up, await slow

    by_address, by_static_name, still_looking_up, slow = asyncio.run(scenario())
    assert by_address.ok and by_static_name.ok and still_looking_up
    assert slow.ok and slow.resolved_targets == ["10.0.0.9"]
    assert resolver.calls == [SLOW]


def test_a_blocking_call_gives_its_lookup_up_at_the_deadline_too(make_runtime, resolver):
    runtime = make_runtime(policy={"dns": True, "dns_timeout_sec": 0.2}, resolver=resolver)
    outcome = runtime.call("nmap", {"target": SLOW})
    assert outcome.error_type == "validation" and "lookup timed out" in outcome.error.message
    assert resolver.finished == []
    assert scan_calls(binary(runtime, "nmap")) == []


def test_a_call_refused_for_its_arguments_looks_nothing_up(make_runtime, resolver):
    runtime = make_runtime(policy={"dns": True, "dns_timeout_sec": 60}, resolver=resolver)

    async def scenario():
        return await runtime.acall("nmap", {"target": SLOW, "timing": "fast"})

    outcome = asyncio.run(scenario())
    assert outcome.error_type == "validation" and "timing" in outcome.error.message
    assert resolver.calls == [], "a call that can never run must not cost a look-up"


def test_labrecon_check_shows_the_lookup_limits(tmp_path, capsys):
    config = tmp_path / "labrecon.toml"
    config.write_text("[policy]\ndns_timeout_sec = 0.5\ndns_concurrency = 3\n")
    main(["check", "--config", str(config)])
    assert "DNS on (each look-up within 0.5s, 3 at once)" in capsys.readouterr().out
