"""Telling a service manager where the daemon stands: the sd_notify datagram protocol.

Each state is one datagram of `KEY=value` lines sent to the AF_UNIX socket `$NOTIFY_SOCKET` names (a
leading `@` names an abstract socket). Without the variable every function is a no-op. Nothing here
raises into the daemon or blocks it: a send that fails is dropped, and the first failure is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

__all__ = [
    "NOTIFY_SOCKET",
    "Watchdog",
    "notify",
    "notify_address",
    "ready",
    "reloading",
    "stopping",
    "watchdog",
]

log = logging.getLogger("labrecon.systemd")

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"

_failure_logged = threading.Event()


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """Where notifications go: a path, an abstract name (bytes, leading NUL), or None for nobody."""
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a kind of address (vsock, say) this daemon does not speak


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `fields` (`KEY=value` each) as one datagram; True if it was sent, False if not (never raises)."""
    address = notify_address(environ)
    if address is None:
        return False
    message = "\n".join(field.replace("\n", " ") for field in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, socket.MSG_DONTWAIT, address)  # a full queue drops the message, never blocks us
    except OSError as exc:
        if not _failure_logged.is_set():
            _failure_logged.set()
            log.warning("the service manager could not be notified (logged once)", extra={"error": str(exc)})
        return False
    return True


def ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """The daemon serves: `READY=1`, with a `STATUS=` line when given. Also ends a reload."""
    return notify("READY=1", *_status(status), environ=environ)


def reloading(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """A reload begins: `RELOADING=1` with the monotonic time; send `ready()` when it is over."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status), environ=environ)


def stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown begins: `STOPPING=1`."""
    return notify("STOPPING=1", *_status(status), environ=environ)


def _status(status: str | None) -> tuple[str, ...]:
    return () if status is None else (f"STATUS={status}",)


class Watchdog:
    """Sends `WATCHDOG=1` every half of `$WATCHDOG_USEC` while `alive()` says the daemon still answers.

    `alive` is asked from the watchdog's own thread; one that raises or returns False skips that beat,
    so a daemon that stops answering is, in time, restarted by the service manager.
    """

    def __init__(
        self, interval_sec: float, alive: Callable[[], object], *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.interval_sec = interval_sec
        self._alive = alive
        self._environ = environ
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labrecon-sd-watchdog", daemon=True)

    @classmethod
    def from_environ(cls, alive: Callable[[], object], environ: Mapping[str, str] | None = None) -> Watchdog | None:
        """A watchdog when the service manager asked for one (`WATCHDOG_USEC`, for this pid); else None."""
        environ = os.environ if environ is None else environ
        try:
            usec = int(environ.get("WATCHDOG_USEC", "0"))
            pid = int(environ.get("WATCHDOG_PID", str(os.getpid())))
        except ValueError:
            return None
        if usec <= 0 or pid != os.getpid() or notify_address(environ) is None:
            return None
        return cls(usec / 2 / 1_000_000, alive, environ=environ)

    def beat(self) -> bool:
        """One beat: ask `alive()`, and if it answers, send `WATCHDOG=1`; True if sent."""
        try:
            answered = bool(self._alive())
        except Exception as exc:  # noqa: BLE001 - a daemon that cannot answer misses its beat, nothing more
            log.warning("watchdog beat skipped: the daemon did not answer", extra={"error": repr(exc)})
            return False
        return answered and notify("WATCHDOG=1", environ=self._environ)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.interval_sec + 1.0)

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self.interval_sec):
            self.beat()


@contextmanager
def watchdog(alive: Callable[[], object], environ: Mapping[str, str] | None = None) -> Iterator[Watchdog | None]:
    """A `Watchdog` beating for the duration of the block when the service manager asked for one."""
    dog = Watchdog.from_environ(alive, environ)
    if dog is not None:
        dog.start()
    try:
        yield dog
    finally:
        if dog is not None:
            dog.stop()
