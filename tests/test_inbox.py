"""The supervisor's inbox: bookkeeping waits for the next real message, never overtakes it, never piles up unbounded."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from actors.inbox import DeferringInbox


@dataclass
class Envelope:
    message: object


class Reader:
    """Reads the inbox on its own thread, as an actor loop does."""

    def __init__(self, inbox: DeferringInbox, expected: int) -> None:
        self.inbox = inbox
        self.read: list[object] = []
        self.done = threading.Event()
        self.expected = expected
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while len(self.read) < self.expected:
            self.read.append(self.inbox.get().message)
        self.done.set()


def bookkeeping(message: object) -> bool:
    return isinstance(message, int)


def test_deferred_events_arrive_in_order_with_the_next_real_message() -> None:
    inbox = DeferringInbox(bookkeeping)
    reader = Reader(inbox, expected=4)
    for event in (1, 2, 3):
        inbox.put(Envelope(event))
    inbox.put(Envelope("status?"))
    assert reader.done.wait(10)
    assert reader.read == [1, 2, 3, "status?"]
    assert inbox.empty()


def test_a_full_backlog_wakes_the_reader_without_a_real_message() -> None:
    inbox = DeferringInbox(bookkeeping, max_deferred=3)
    reader = Reader(inbox, expected=3)
    for event in (1, 2, 3):
        inbox.put(Envelope(event))
    assert reader.done.wait(10)
    assert reader.read == [1, 2, 3]


def test_what_was_put_is_there_for_a_draining_reader() -> None:
    """pykka's teardown drains with empty()/get(); deferred events must be visible to it."""
    inbox = DeferringInbox(bookkeeping)
    inbox.put(Envelope(7))
    assert not inbox.empty()
    assert inbox.get().message == 7
    assert inbox.empty()


def test_many_writers_lose_nothing() -> None:
    inbox = DeferringInbox(bookkeeping, max_deferred=64)
    writers, per_writer = 8, 500
    reader = Reader(inbox, expected=writers * per_writer + 1)

    def write(base: int) -> None:
        for i in range(per_writer):
            inbox.put(Envelope(base + i))

    threads = [threading.Thread(target=write, args=(w * per_writer,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    inbox.put(Envelope("flush"))
    assert reader.done.wait(30)
    assert sorted(m for m in reader.read if isinstance(m, int)) == list(range(writers * per_writer))
    assert reader.read[-1] == "flush"
