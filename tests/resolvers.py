"""Fake resolvers for tests: answers come from a dict, never from DNS."""

from __future__ import annotations

import ipaddress
import threading

from actors.settings import IPAddress

HANG_GUARD_SEC = 60.0


class HangingResolver:
    """A resolver whose look-ups hang until `release()`, then answer from `answers`; it records every name asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.finished: list[str] = []
        self._released = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> list[IPAddress]:
        with self._lock:
            self.calls.append(name)
        self._released.wait(HANG_GUARD_SEC)
        with self._lock:
            self.finished.append(name)
        return [ipaddress.ip_address(self.answers[name])]

    def release(self) -> None:
        self._released.set()
