"""A serving daemon follows its config file: SIGHUP and the file watcher reload it, on one thread.

A signal handler only queues the request (`SimpleQueue.put` is safe there): the reload thread applies
it, since a reload waits on the supervisor. Requests that pile up while one runs are served by one
reload. A refused config is one warning line naming the key, and the daemon goes on serving under
the config in force. An applied one also sets the log level it names.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from supervisor.config import ConfigError, Settings
from supervisor.runtime import Runtime, RuntimeStopped
from transports import systemd
from transports.config_watch import ConfigWatcher

__all__ = ["ReloadRequests", "follow_config", "one_line"]

log = logging.getLogger("labrecon.config")

BY_SIGNAL = "SIGHUP"
BY_WATCHER = "file watcher"


class ReloadRequests:
    """The one thread that reloads `runtime` when asked; `request` may be called from a signal handler.

    Requests are served only between `open` (the daemon serves) and `close` (it begins to stop): one
    made while it starts waits, one made while it stops is dropped, so a reload never races the bind
    checks of a start nor a shutdown, and a service manager hears READY=1 only from a serving daemon.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._opened = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labrecon-reload", daemon=True)

    def start(self) -> ReloadRequests:
        self._thread.start()
        return self

    def open(self) -> None:
        """The daemon serves: reload when asked, beginning with what was asked meanwhile."""
        self._opened.set()

    def request(self, by: str) -> None:
        """Ask for a reload on behalf of `by`; returns at once."""
        self._queue.put(by)

    def close(self) -> None:
        """The daemon stops: no more reloads (one being applied finishes); returns at once."""
        self._closed.set()
        self._queue.put(None)
        self._opened.set()

    def stop(self, timeout: float = 10.0) -> None:
        """`close`, then wait (up to `timeout`) for a reload being applied."""
        self.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        self._opened.wait()
        while (by := self._queue.get()) is not None:
            with contextlib.suppress(queue.Empty):
                while True:  # what piled up meanwhile is served by this one reload
                    if self._queue.get_nowait() is None:
                        return  # closing
            if self._closed.is_set():
                return
            self._reload(by)

    def _reload(self, by: str) -> None:
        systemd.reloading()  # a service manager sees the reload begin, and end with READY=1 either way
        try:
            self.runtime.reload(by=by)
        except ConfigError as exc:
            reason = one_line(str(exc)) or "the config was refused"
            log.warning("configuration not reloaded, still serving the one in force: %s", reason, extra={"by": by})
        except RuntimeStopped:
            pass
        except Exception:
            log.exception("reloading the configuration failed", extra={"by": by})
        finally:
            systemd.ready("serving; configuration reloaded")


def one_line(text: str) -> str:
    """A multi-line config error (`file x is invalid:` then a key a line) as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head, *problems = lines
    return f"{head} {'; '.join(problems)}" if problems else head


@contextlib.contextmanager
def follow_config(runtime: Runtime) -> Iterator[ReloadRequests]:
    """While inside: SIGHUP reloads (in the main thread only), the watcher too with `[config] watch`,
    from when the daemon calls `open()` on what this yields until it calls `close()`.

    Each applied reload sets the root logger to its `logging.level`. On leaving, the signal handler is
    restored and the watcher and the reload thread end.
    """
    requests = ReloadRequests(runtime).start()
    unfollow = runtime.on_reloaded(_apply_log_level)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous: Any = signal.signal(signal.SIGHUP, _on_sighup(requests)) if in_main_thread else None
    watcher = None
    if runtime.settings.config.watch:
        source = runtime.config.source
        if source is None:
            log.warning("[config] watch is on, but the daemon read no config file: there is nothing to watch")
        else:
            watcher = ConfigWatcher(source, lambda: requests.request(BY_WATCHER)).start()
    try:
        yield requests
    finally:
        if watcher is not None:
            watcher.stop()
        if in_main_thread:
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
        requests.stop()
        unfollow()


def _on_sighup(requests: ReloadRequests) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        requests.request(BY_SIGNAL)  # nothing else here: the reload waits on the supervisor

    return handler


def _apply_log_level(old: Settings, new: Settings) -> None:
    if new.logging.level != old.logging.level:
        logging.getLogger().setLevel(new.logging.level.upper())
        log.info("log level changed", extra={"level": new.logging.level})
