"""A request's response stream on its own: numbering, the bounded replay buffer, readers, event ids."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from tests.http_support import parse_events
from transports.http.response_streams import REPLAY_EVENTS, ResponseStream, SessionStreams


def note(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p", "progress": n}}


REPLY = {"jsonrpc": "2.0", "id": 1, "result": {}}


def replay(stream: ResponseStream, cursor: int) -> list[tuple[str | None, Any]]:
    frames = b"".join(frame for _, frame in stream.after(cursor)).decode()
    return [(event.id, event.json()) for event in parse_events(frames)]


def test_a_stream_keeps_only_its_newest_events_and_the_reply_is_never_the_one_dropped():
    stream = SessionStreams().open(limit=3)
    stream.primed = True
    for n in range(1, 6):
        stream.append(note(n))
    stream.finish(REPLY)
    number = stream.number
    # Six events were sent; a reader resuming from the start gets the three newest, ending with the reply.
    assert replay(stream, 0) == [(f"{number}-4", note(4)), (f"{number}-5", note(5)), (f"{number}-6", REPLY)]
    assert replay(stream, 5) == [(f"{number}-6", REPLY)]
    assert stream.ended_for(6) and not stream.ended_for(5)
    stream.append(note(7))  # nothing follows the reply
    assert stream.last == 6
    assert REPLAY_EVENTS >= 100


def test_a_stream_outside_a_session_numbers_nothing_and_is_not_resumable():
    stream = ResponseStream()
    stream.append(note(1))
    assert not stream.resumable
    assert replay(stream, 0) == [(None, note(1))]
    stream.finish(None)
    assert stream.finished and not stream.holds_only_its_reply  # a notification went before: no single answer


def test_event_ids_lead_back_to_their_stream_and_nothing_else():
    streams = SessionStreams()
    first, second = streams.open(), streams.open()
    assert first.number != second.number
    first.primed = True
    first.append(note(1))
    assert streams.find(first.priming_id) == (first, 0)
    assert streams.find(f"{first.number}-1") == (first, 1)
    for bad in (f"{first.number}-2", second.priming_id, "x", "", "1", "-1-0", "1-01", "1-1-1", f" {first.number}-1x"):
        assert streams.find(bad) is None, bad  # beyond what was sent, never primed, or not an id of ours
    streams.forget(first)
    assert streams.find(first.priming_id) is None


def test_a_session_keeps_its_running_streams_and_only_the_newest_finished_ones():
    streams = SessionStreams(keep_finished=2)
    running = streams.open()
    finished = []
    for _ in range(4):
        stream = streams.open()
        stream.primed = True
        stream.finish(REPLY)
        finished.append(stream)
    streams.open()
    assert [streams.find(stream.priming_id) is not None for stream in finished] == [False, False, True, True]
    assert len(streams) == 4  # the running one, two finished, the newest
    assert not running.finished


async def timers_due_now_have_run() -> None:
    """Return once every timer due by now has had its turn (they run in the same loop pass as this one)."""
    loop = asyncio.get_running_loop()
    later = loop.create_future()
    loop.call_later(0, later.set_result, None)
    await later


def hanging_request() -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(asyncio.Event().wait())


def test_a_new_reader_takes_the_stream_over_and_an_unread_primed_stream_is_given_up():
    async def scenario() -> None:
        stream = ResponseStream(1)
        stream.primed = True
        stream.request = request = hanging_request()
        first = stream.attach()
        second = stream.attach()
        assert first.replaced.is_set() and not second.replaced.is_set()
        stream.detach(first, resume_window=0)  # the replaced connection ending changes nothing
        await timers_due_now_have_run()
        assert not request.done()
        stream.detach(second, resume_window=0)  # nobody reads it any more, nobody comes back
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, 5)

    asyncio.run(scenario())


def test_a_reader_coming_back_in_time_or_a_finished_stream_keeps_the_request_alive():
    async def scenario() -> None:
        stream = ResponseStream(1)
        stream.primed = True
        stream.request = request = hanging_request()
        stream.detach(stream.attach(), resume_window=0)
        reader = stream.attach()  # resumed before the window closed
        await timers_due_now_have_run()
        assert not request.done()
        waiting = asyncio.ensure_future(stream.wait_beyond(0))
        stream.finish(REPLY)
        await asyncio.wait_for(waiting, 5)
        stream.detach(reader, resume_window=0)  # finished: there is nothing left to give up
        await timers_due_now_have_run()
        assert not request.done()
        request.cancel()

    asyncio.run(scenario())


def test_a_stream_is_waited_for_while_read_and_for_its_resume_window_after_and_not_once_delivered():
    now = [100.0]
    streams = SessionStreams(clock=lambda: now[0])
    assert streams.resume_deadline is None
    unprimed, stream = streams.open(), streams.open()
    assert streams.resume_deadline is None  # no client holds an id of either: none is waited for
    stream.primed = True
    reader = stream.attach()
    assert stream.resume_deadline == streams.resume_deadline == math.inf  # a connection reads it
    stream.finish(REPLY)
    stream.detach(reader, resume_window=60.0)  # left before the reply was read
    assert stream.resume_deadline == streams.resume_deadline == 160.0
    now[0] = 150.0
    stream.detach(stream.attach(), resume_window=60.0)  # came back, and left again: a new window
    assert streams.resume_deadline == 210.0
    streams.forget(stream)  # the reply was delivered
    streams.forget(unprimed)
    assert streams.resume_deadline is None and len(streams) == 0
