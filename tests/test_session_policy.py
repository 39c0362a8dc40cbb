"""Which sessions expire, which one makes room, whose sessions count together: pure, on a hand-set clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from transports.http.session_policy import Lifetimes, client_key, counts_as_use, eviction_victim, expiry
from transports.http.sessions import ClientSessionLimit, SessionKind, SessionLimit, SessionTable
from transports.mcp.session import Session

LIFETIMES = Lifetimes(idle_sec=600.0, unused_sec=30.0)


@dataclass
class Fake:
    name: str
    last_active: float = 0.0
    used: bool = False
    busy: bool = False
    has_stream: bool = False
    client: str | None = None
    resume_deadline: float | None = None


# --- expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "now", "reason"),
    [
        (Fake("unused"), 29.9, None),
        (Fake("unused"), 30.0, "unused for 30s after initialize"),
        (Fake("used", used=True), 599.0, None),
        (Fake("used", used=True), 600.0, "idle for 600s"),
        (Fake("unused, holding its stream", has_stream=True), 599.0, None),
        (Fake("idle, holding its stream", has_stream=True), 600.0, "idle for 600s"),  # a hung client
        (Fake("unused, call in flight", busy=True), 10_000.0, None),
        (Fake("used, call in flight", used=True, busy=True), 10_000.0, None),
        (Fake("touched late", last_active=100.0), 129.0, None),
        (Fake("touched late", last_active=100.0), 130.0, "unused for 30s after initialize"),
        (Fake("reply awaiting its client", used=True, resume_deadline=660.0), 659.0, None),
        (Fake("reply awaiting its client", used=True, resume_deadline=660.0), 660.0, "idle for 600s"),
        (Fake("reply read by a connection", used=True, resume_deadline=math.inf), 10_000.0, None),
    ],
    ids=lambda value: value.name if isinstance(value, Fake) else None,
)
def test_expiry(session, now, reason):
    assert expiry(session, now, LIFETIMES) == reason


# --- eviction --------------------------------------------------------------------------------


def test_the_victim_is_never_used_first_then_least_recently_active():
    sessions = [
        Fake("used long ago", last_active=1.0, used=True),
        Fake("unused recently", last_active=50.0),
        Fake("unused earlier", last_active=40.0),
        Fake("used recently", last_active=60.0, used=True),
    ]
    assert name_of(eviction_victim(sessions, 100.0)) == "unused earlier"
    assert name_of(eviction_victim(sessions[:1] + sessions[3:], 100.0)) == "used long ago"


def name_of(victim: Fake | None) -> str:
    assert victim is not None, "no session was chosen"
    return victim.name


def test_a_session_with_a_call_in_flight_or_an_open_stream_is_never_the_victim():
    held = [
        Fake("call in flight", last_active=0.0, busy=True),
        Fake("open stream", last_active=0.0, has_stream=True),
        Fake("both", last_active=0.0, busy=True, has_stream=True),
    ]
    assert eviction_victim(held, 100.0) is None
    assert name_of(eviction_victim([*held, Fake("free", last_active=99.0, used=True)], 100.0)) == "free"
    assert eviction_victim([], 100.0) is None


def test_a_session_whose_reply_awaits_its_client_is_held_until_its_resume_window_has_passed():
    awaiting = Fake("reply awaiting its client", last_active=0.0, used=True, resume_deadline=160.0)
    newer = Fake("used later", last_active=50.0, used=True)
    assert name_of(eviction_victim([awaiting, newer], 159.0)) == "used later"
    assert eviction_victim([awaiting], 159.0) is None
    assert name_of(eviction_victim([awaiting, newer], 160.0)) == "reply awaiting its client"
    reading = Fake("reply being read", last_active=0.0, used=True, resume_deadline=math.inf)
    assert eviction_victim([reading], 10_000.0) is None


# --- who counts together ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("127.0.0.1", None),
        ("127.0.0.2", None),
        ("::1", None),
        ("::ffff:127.0.0.1", None),
        ("", None),
        (None, None),
        ("/run/labrecon.sock", "/run/labrecon.sock"),
    ],
)
def test_client_key(address, key):
    assert client_key(address) == key


@pytest.mark.parametrize(
    ("message", "used"),
    [
        ({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}, False),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, False),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, True),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, True),
        ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}, True),
        ([{"jsonrpc": "2.0", "method": "notifications/initialized"}], True),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, True),
    ],
)
def test_counts_as_use(message, used):
    assert counts_as_use(message) is used


# --- the table, on a hand-set clock -------------------------------------------------------------


class Dispatcher:
    def cancel_all(self, mcp: Session) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, **limits: int) -> SessionTable:
    return SessionTable(
        Dispatcher(),  # type: ignore[arg-type]  # closing an idle session only asks it to cancel nothing
        max_sessions=limits.get("max_sessions", 64),
        idle_sec=600.0,
        unused_sec=30.0,
        max_per_client=limits.get("max_per_client", 16),
        clock=clock,
    )


def test_the_table_expires_an_unused_session_at_unused_sec_and_a_used_one_at_idle_sec():
    clock = Clock()
    sessions = table(clock)
    unused = sessions.open(SessionKind.HTTP, Session())
    used = sessions.open(SessionKind.HTTP, Session())
    sessions.touch(used, used=True)
    clock.now += 29.0
    sessions.touch(unused)  # notifications/initialized: activity, not use
    assert sessions.expire() == 0
    clock.now += 30.0
    assert sessions.expire() == 1 and unused.closed and not used.closed
    clock.now += 600.0
    assert sessions.expire() == 1 and used.closed


def test_a_full_table_evicts_for_a_newcomer_until_every_session_is_held():
    clock = Clock()
    sessions = table(clock, max_sessions=2)
    streaming = sessions.open(SessionKind.SSE, Session())
    idle = sessions.open(SessionKind.HTTP, Session())
    sessions.touch(idle, used=True)
    clock.now += 1.0
    newcomer = sessions.open(SessionKind.HTTP, Session())
    assert idle.closed and not streaming.closed and not newcomer.closed
    newcomer.streams = 1
    with pytest.raises(SessionLimit):
        sessions.open(SessionKind.HTTP, Session())
    assert sessions.counts() == {"sse": 1, "http": 1, "http_stateless": 0}


def test_the_table_caps_each_client_address_but_not_loopback():
    clock = Clock()
    sessions = table(clock, max_per_client=2)
    for _ in range(2):
        sessions.open(SessionKind.HTTP, Session(), client="192.0.2.7")
    with pytest.raises(ClientSessionLimit) as caught:
        sessions.open(SessionKind.HTTP, Session(), client="192.0.2.7")
    assert caught.value.status == 429
    sessions.open(SessionKind.HTTP, Session(), client="192.0.2.8")
    for _ in range(5):
        sessions.open(SessionKind.HTTP, Session(), client="127.0.0.1")
    clock.now += 30.0  # the capped client's sessions were never used: they expire, and it may open again
    sessions.open(SessionKind.HTTP, Session(), client="192.0.2.7")
    assert sessions.counts()["http"] == 1


def test_a_reply_left_for_its_client_holds_the_session_until_delivered_or_its_window_has_passed():
    clock = Clock()
    sessions = table(clock, max_sessions=1)
    away = sessions.open(SessionKind.HTTP, Session())
    sessions.touch(away, used=True)
    stream = away.resumable.open()
    stream.primed = True  # the client was given an event id
    reader = stream.attach()
    stream.finish({"jsonrpc": "2.0", "id": 1, "result": {}})
    with pytest.raises(SessionLimit):  # a connection is reading the reply
        sessions.open(SessionKind.HTTP, Session())
    stream.detach(reader, resume_window=60.0)  # ... and left before its end: the client has 60 s to come back
    clock.now += 59.0
    with pytest.raises(SessionLimit):
        sessions.open(SessionKind.HTTP, Session())
    clock.now += 1.0
    sessions.open(SessionKind.HTTP, Session())
    assert away.closed

    delivered = sessions.open(SessionKind.HTTP, Session())
    sessions.touch(delivered, used=True)
    stream = delivered.resumable.open()
    stream.primed = True
    reader = stream.attach()
    stream.finish({"jsonrpc": "2.0", "id": 1, "result": {}})
    delivered.resumable.forget(stream)  # its end was sent
    stream.detach(reader, resume_window=60.0)
    sessions.open(SessionKind.HTTP, Session())
    assert delivered.closed
