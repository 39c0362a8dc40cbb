"""Watching the config file (`[config] watch = true`): one thread, one callback per burst of changes.

The file's directory is watched, and a burst of events in it counts when the file it names, symlinks
followed, is another file or has changed since the last burst: so an editor that writes a new file and
renames it over the old one is seen like one that writes in place, and so is a symlink swapped to a new
version (as deployment tools and mounted config maps do). Changes that come close together (one save is
often several events) are one call. The thread ends with `stop`.
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
        self._seen = self._identity()
        self.watching = threading.Event()  # set once changes to the file are seen
        self._thread = threading.Thread(target=self._run, name="labrecon-config-watch", daemon=True)

    def start(self) -> ConfigWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _identity(self) -> tuple[int, int, int, int] | None:
        """The file the path names now (symlinks followed), and its version; None while there is none."""
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size

    def _changed(self) -> bool:
        now = self._identity()
        changed, self._seen = now != self._seen, now
        return changed

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.path.parent,
                watch_filter=None,  # any entry: a symlink swapped beside the file changes it too
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
                if changes and self._changed():
                    log.info("the config file changed", extra={"path": str(self.path)})
                    self._on_change()
        except Exception:
            log.exception(
                "watching the config file failed; reloads still come by SIGHUP and labrecon reload",
                extra={"path": str(self.path)},
            )
