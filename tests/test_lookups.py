"""Look-ups off the caller's thread: the deadline, the bound on threads, the line beyond it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import pytest

from actors.lookups import Lookups
from tests.helpers import wait_until
from tests.resolvers import HangingResolver

ANSWERS = {f"h{i}.lab.internal": f"10.0.0.{i}" for i in range(1, 11)}
LONG = 60.0  # a deadline no test reaches: only a hang guard


@pytest.fixture
def resolver():
    fake = HangingResolver(ANSWERS)
    yield fake
    fake.release()


def lookup_threads() -> int:
    return sum(thread.name == "labrecon-lookup" for thread in threading.enumerate())


def test_an_answer_within_the_deadline_is_returned():
    lookups = Lookups(lambda name: [ipaddress.ip_address("10.0.0.1")], timeout_sec=LONG, limit=2)
    assert list(lookups.resolve("h1.lab.internal")) == [ipaddress.ip_address("10.0.0.1")]


def test_a_resolver_error_reaches_the_caller():
    def refuse(name: str) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror):
        Lookups(refuse, timeout_sec=LONG, limit=2).resolve("gone.lab.internal")


def test_a_hung_lookup_is_given_up_at_its_deadline_and_finishes_on_its_own(resolver):
    lookups = Lookups(resolver, timeout_sec=0.05, limit=2)
    with pytest.raises(TimeoutError, match=r"^lookup timed out after 0.05 s$"):
        lookups.resolve("h1.lab.internal")
    assert resolver.calls == ["h1.lab.internal"] and resolver.finished == []
    assert lookups.threads == 1
    resolver.release()
    wait_until(lambda: lookups.threads == 0, what="the look-up thread to end")
    assert resolver.finished == ["h1.lab.internal"]


def test_lookups_beyond_the_bound_wait_in_line_without_a_thread_of_their_own(resolver):
    lookups = Lookups(resolver, timeout_sec=LONG, limit=2)
    started = [lookups.start(name) for name in ANSWERS]
    wait_until(lambda: len(resolver.calls) == 2, what="two look-ups running")
    assert lookups.threads == 2 and lookup_threads() == 2
    resolver.release()
    for lookup in started:
        lookup.wait()
    assert [str(lookup.answer(lookup.name)[0]) for lookup in started] == list(ANSWERS.values())
    assert sorted(resolver.calls) == sorted(ANSWERS)  # the two threads served the whole line
    wait_until(lambda: lookups.threads == 0, what="the look-up threads to end")


def test_a_lookup_whose_deadline_passes_in_line_never_runs(resolver):
    lookups = Lookups(resolver, timeout_sec=0.05, limit=1)
    lookups.start("h1.lab.internal")
    wait_until(lambda: resolver.calls, what="the first look-up running")
    with pytest.raises(TimeoutError, match=r"waiting for a free look-up thread \(all 1 are busy\)"):
        lookups.resolve("h2.lab.internal")
    resolver.release()
    wait_until(lambda: lookups.threads == 0, what="the look-up thread to end")
    assert resolver.calls == ["h1.lab.internal"]


def test_a_flood_of_hung_lookups_holds_at_most_limit_threads(resolver):
    lookups = Lookups(resolver, timeout_sec=0.01, limit=3)
    for _ in range(50):
        with pytest.raises(TimeoutError):
            lookups.resolve("h1.lab.internal")
    assert lookups.threads == 3 and lookup_threads() == 3
    assert len(resolver.calls) == 3


def test_a_lookup_only_answers_for_its_own_name():
    lookups = Lookups(lambda name: [ipaddress.ip_address("10.0.0.1")], timeout_sec=LONG, limit=1)
    lookup = lookups.start("h1.lab.internal")
    lookup.wait()
    with pytest.raises(LookupError):
        lookup.answer("h2.lab.internal")


def test_settling_from_asyncio_leaves_the_loop_free(resolver):
    lookups = Lookups(resolver, timeout_sec=LONG, limit=1)

    async def scenario() -> bool:
        lookup = lookups.start("h1.lab.internal")
        settling = asyncio.create_task(lookup.settled())
        # The loop keeps running other work while the look-up hangs.
        await asyncio.to_thread(wait_until, lambda: resolver.calls, what="the look-up running")
        pending = not settling.done()
        resolver.release()
        await settling
        assert [str(a) for a in lookup.answer("h1.lab.internal")] == ["10.0.0.1"]
        return pending

    assert asyncio.run(scenario())


def test_settling_from_asyncio_gives_up_at_the_deadline(resolver):
    lookups = Lookups(resolver, timeout_sec=0.05, limit=1)

    async def scenario() -> None:
        lookup = lookups.start("h1.lab.internal")
        await lookup.settled()
        with pytest.raises(TimeoutError, match="lookup timed out"):
            lookup.answer("h1.lab.internal")

    asyncio.run(scenario())
    assert resolver.finished == []


def test_cancelling_the_awaiting_task_takes_its_lookup_out_of_line(resolver):
    lookups = Lookups(resolver, timeout_sec=LONG, limit=1)

    async def scenario() -> None:
        lookups.start("h1.lab.internal")
        await asyncio.to_thread(wait_until, lambda: resolver.calls, what="the first look-up running")
        in_line = asyncio.Event()

        async def look_up() -> None:
            lookup = lookups.start("h2.lab.internal")
            in_line.set()
            await lookup.settled()

        waiting = asyncio.create_task(look_up())
        await in_line.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())
    resolver.release()
    wait_until(lambda: lookups.threads == 0, what="the look-up thread to end")
    assert resolver.calls == ["h1.lab.internal"]
