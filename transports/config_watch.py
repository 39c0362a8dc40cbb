"""Watching the config file (`[config] watch = true`): one thread, one callback per burst of changes.

The file's directory is watched and the events filtered to the file, so an editor that writes a new
file and renames it over the old one is seen like one that writes in place. Changes that come close
together (one save is often several events) are one call. The thread ends with `stop`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import watchfiles

__all__ = ["ConfigWatcher"]

log = logging.getLogger("labrecon.config")

DEBOUNCE_MS: Final = 400
"""Events within this long of each other are one change."""

STEP_MS: Final = 50
"""How often the watcher looks at its stop event (and for the end of a burst)."""

READY_MS: Final = 1000
"""How long the watcher waits, with nothing changing, before it says it is watching."""


class ConfigWatcher:
    """Calls `on_change` (on the watcher's thread) after each burst of changes to the file at `path`."""

    def __init__(self, path: str | Path, on_change: Callable[[], None]) -> None:
        self.path = Path(os.path.abspath(path))
        self._on_change = on_change
        self._stop = threading.Event()
        self.watching = threading.Event()  # set once changes to the file are seen
        self._thread = threading.Thread(target=self._run, name="labrecon-config-watch", daemon=True)

    def start(self) -> ConfigWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _is_the_file(self, change: watchfiles.Change, path: str) -> bool:
        return path == str(self.path)

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.path.parent,
                watch_filter=self._is_the_file,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                rust_timeout=READY_MS,
                yield_on_timeout=True,  # the first quiet timeout says the watch is set up
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
            ):
                if not self.watching.is_set():
                    self.watching.set()
                    log.info("watching the config file for changes", extra={"path": str(self.path)})
                if changes:
                    log.info("the config file changed", extra={"path": str(self.path)})
                    self._on_change()
        except Exception:
            log.exception(
                "watching the config file failed; reloads still come by SIGHUP and labrecon reload",
                extra={"path": str(self.path)},
            )
