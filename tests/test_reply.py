"""A reply is answered once, its outcome is recorded before its caller sees it, and a bad callback loses nothing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from actors.reply import AsyncReply, ThreadReply


def test_callbacks_run_before_the_caller_can_see_the_answer() -> None:
    reply: ThreadReply[str] = ThreadReply()
    seen: list[bool] = []
    reply.on_resolved(lambda value: seen.append(reply.future.done()))
    assert reply.resolve("ok")
    assert seen == [False]
    assert reply.wait(1) == "ok"


def test_a_failing_callback_still_delivers_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    reply: ThreadReply[str] = ThreadReply()
    later: list[str] = []

    def broken(value: str) -> None:
        raise RuntimeError("the count is broken")

    reply.on_resolved(broken)
    reply.on_resolved(later.append)
    with caplog.at_level(logging.ERROR):
        assert reply.resolve("ok")
    assert reply.wait(1) == "ok"
    assert later == ["ok"]
    assert "reply callback failed" in caplog.text


def test_only_the_first_answer_counts_and_late_callbacks_run_at_once() -> None:
    reply: ThreadReply[int] = ThreadReply()
    assert reply.resolve(1)
    assert not reply.resolve(2)
    losers: list[int] = []
    assert not reply.resolve(3, before=losers.append)
    late: list[int] = []
    reply.on_resolved(late.append)
    assert late == [1] and reply.wait(1) == 1
    assert losers == []


def test_the_winner_records_its_outcome_first_then_callbacks_then_the_caller_sees_it() -> None:
    reply: ThreadReply[str] = ThreadReply()
    order: list[str] = []
    reply.on_resolved(lambda value: order.append(f"callback {value} {reply.future.done()}"))
    assert reply.resolve("ok", before=lambda value: order.append(f"before {value} {reply.future.done()}"))
    assert order == ["before ok False", "callback ok False"]
    assert reply.wait(1) == "ok"


def test_a_failing_before_hook_still_delivers_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    reply: ThreadReply[str] = ThreadReply()

    def broken(value: str) -> None:
        raise RuntimeError("the count is broken")

    with caplog.at_level(logging.ERROR):
        assert reply.resolve("ok", before=broken)
    assert reply.wait(1) == "ok"
    assert "reply callback failed" in caplog.text


def test_an_async_reply_completes_on_its_loop() -> None:
    async def main() -> str:
        reply: AsyncReply[str] = AsyncReply()
        closed: list[str] = []
        reply.on_resolved(closed.append)
        await asyncio.to_thread(reply.resolve, "from another thread")
        value = await reply.future
        assert closed == ["from another thread"]
        return value

    assert asyncio.run(main()) == "from another thread"
