"""The scans a runtime has run, as its callers reach them: by id, bound to their owner.

`Scans` writes the store at three moments of a call (admitted, its process started, answered) and
keeps, for each scan still running, its latest progress and a future that completes once the store
holds the final record. Every read takes the `Caller`: a non-admin sees only what it owns, and a scan
it does not own raises exactly the `ScanNotFound` an unknown id raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from actors.api import Caller, ProgressSink
from actors.results import CallOutcome
from supervisor.scans.records import ScanNotFound, ScanRecord, ScanStatus, new_scan_id, settled_fields
from supervisor.scans.store import ScanStore, page_cursor

__all__ = ["LiveScan", "Scans"]

logger = logging.getLogger(__name__)

EXPIRY_BATCH = 500
"""Scans removed per store transaction, so a sweep never holds the store for long."""

OUTCOMES_KEPT = 8
"""Finished outcomes kept in memory once read: a model paging through a big scan reads it many times."""

ELSEWHERE_POLL_SEC = 1.0
"""How often a waiter reads again a scan that another daemon sharing the store runs."""

EXPIRY_EVERY_SEC = 60.0
"""How often the sweeper removes expired scans."""


@dataclass(eq=False)
class LiveScan:
    """A scan whose call has not been answered yet (or whose answer the store could not take)."""

    record: ScanRecord
    done: Future[CallOutcome] = field(default_factory=Future)
    progress: float | None = None
    progress_message: str | None = None
    unstored: CallOutcome | None = None  # the answer, when writing it to the store failed


class Scans:
    """Every scan of one runtime: created, watched and settled here, read back by id or page."""

    def __init__(
        self,
        store: ScanStore,
        *,
        cancel_call: Callable[[str], bool],
        retention_sec: float,
        max_scans: int,
        clock: Callable[[], float] = time.time,
        on_expired: Callable[[list[tuple[str, str]]], None] | None = None,
        on_started: Callable[[ScanRecord], None] | None = None,
        on_cancel_requested: Callable[[ScanRecord, Caller], None] | None = None,
    ) -> None:
        self.store = store
        self._cancel_call = cancel_call
        self._retention_sec = retention_sec
        self._max_scans = max_scans
        self._clock = clock
        self._on_expired = on_expired
        self._on_started = on_started
        self._on_cancel_requested = on_cancel_requested
        self._live: dict[str, LiveScan] = {}
        self._outcomes: OrderedDict[str, CallOutcome] = OrderedDict()  # recently read finished outcomes
        self._lock = threading.Lock()
        self._stop_sweeping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.expired_total = 0

    def now(self) -> float:
        return self._clock()

    # --- life of the service -------------------------------------------------------------------

    def start_sweeping(self, every_sec: float = EXPIRY_EVERY_SEC) -> None:
        """Remove expired scans now and every `every_sec`, on a thread of its own (never a call's)."""

        def sweep() -> None:
            while True:
                try:
                    self.expire()
                except Exception:
                    logger.exception("expiring old scans failed")
                if self._stop_sweeping.wait(every_sec):
                    return

        self._sweeper = threading.Thread(target=sweep, name="labrecon-scan-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop sweeping and close the store; every read after this raises `StoreClosed`."""
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(10.0)
        self.store.close()

    # --- a call's life (the runtime calls these) ------------------------------------------

    def open(
        self, caller: Caller, tool: str, call_id: str, arguments: Mapping[str, Any], *, target: str | None,
        resolved_targets: tuple[str, ...], argv: tuple[str, ...],
    ) -> LiveScan:
        """A call was admitted: its scan is `working` from now on."""
        now = self._clock()
        record = ScanRecord(
            scan_id=new_scan_id(), owner=caller.owner, tool=tool, call_id=call_id, status=ScanStatus.WORKING,
            created_at=now, updated_at=now, arguments=dict(arguments), target=target,
            resolved_targets=resolved_targets, argv=argv,
        )
        live = LiveScan(record)
        self.store.add(record)  # first: a scan the store refused is not left live
        with self._lock:
            self._live[record.scan_id] = live
        if self._on_started is not None:
            self._on_started(record)
        return live

    def refused(self, caller: Caller, tool: str, arguments: Any, outcome: CallOutcome) -> str:
        """A call was answered before it was admitted (bad arguments, a target outside the policy)."""
        now = self._clock()
        record = ScanRecord(
            scan_id=new_scan_id(), owner=caller.owner, tool=tool, call_id=outcome.call_id,
            created_at=now, updated_at=now, arguments=dict(arguments) if isinstance(arguments, Mapping) else {},
            **settled_fields(outcome),
        )
        self.store.add(record, outcome=outcome)
        return record.scan_id

    def progress_sink(self, live: LiveScan, then: ProgressSink | None) -> ProgressSink:
        """Runner thread: keep the scan's latest progress, then pass it on to the caller's own sink."""

        def progressed(done: float, total: float | None, message: str | None) -> None:
            percent = done if not total else 100.0 * done / total
            live.progress = round(percent, 2)  # one reference swap each: a reader sees old or new
            if message is not None:
                live.progress_message = message
            if then is not None:
                then(done, total, message)

        return progressed

    def spawned(self, live: LiveScan, pid: int, start_ticks: int, home: str | None) -> None:
        """Runner thread: the scan's process group exists; recorded so a later start can end it.

        Bookkeeping never gets in the way of supervising the process: a failed write is logged.
        """
        try:
            self.store.record_process(live.record.scan_id, pid, start_ticks, home)
        except sqlite3.Error:
            logger.exception("the scan store could not record a process group", extra={"scan_id": live.record.scan_id})

    def finished(self, live: LiveScan, outcome: CallOutcome) -> None:
        """The call was answered: settle the scan in the store, then wake whoever waits on it.

        If the store cannot take the answer, the scan keeps it in memory (readable until this
        daemon stops) rather than lose it.
        """
        try:
            self.store.finish(
                live.record.scan_id, outcome, at=self._clock(),
                progress=100.0 if outcome.ok else live.progress, progress_message=live.progress_message,
            )
        except sqlite3.Error:
            logger.exception("the scan store could not record an answer; it is kept in memory",
                             extra={"scan_id": live.record.scan_id})
            live.unstored = outcome
        else:
            with self._lock:
                self._live.pop(live.record.scan_id, None)
        live.done.set_result(outcome)

    def keep_for(self, retention_sec: float, max_scans: int) -> None:
        """New retention limits from a reload; the next sweep applies them."""
        with self._lock:
            self._retention_sec, self._max_scans = retention_sec, max_scans

    def expire(self) -> int:
        """Remove finished scans past retention, and beyond `max_scans`, a batch at a time; returns how many went."""
        total = 0
        while True:
            now = self._clock()
            with self._lock:
                retention_sec, max_scans = self._retention_sec, self._max_scans
            removed = self.store.expire(older_than=now - retention_sec, keep=max_scans)
            if removed:
                with self._lock:
                    for scan_id, _ in removed:
                        self._outcomes.pop(scan_id, None)
                self.expired_total += len(removed)
                total += len(removed)
                if self._on_expired is not None:
                    self._on_expired(removed)
            if len(removed) < EXPIRY_BATCH:
                return total

    # --- reads, bound to the caller -------------------------------------------------------------

    def get(self, caller: Caller, scan_id: str) -> ScanRecord:
        record = self.store.get(scan_id, _visible_to(caller))
        if record is None:
            raise ScanNotFound(scan_id)
        return self._live_view(record)

    def outcome(self, caller: Caller, scan_id: str) -> CallOutcome | None:
        """The full outcome of a finished scan; None while it runs."""
        record = self.get(caller, scan_id)
        if not record.status.terminal:
            return None
        live = self._live.get(scan_id)
        if live is not None and live.unstored is not None:
            return live.unstored
        with self._lock:
            cached = self._outcomes.get(scan_id)
        if cached is not None:  # the caller may see it: `get` above said so
            return cached
        outcome = self.store.outcome(scan_id, _visible_to(caller))
        if outcome is not None:
            with self._lock:  # a finished scan never changes: read it again from memory, while it is recent
                self._outcomes[scan_id] = outcome
                while len(self._outcomes) > OUTCOMES_KEPT:
                    self._outcomes.popitem(last=False)
        return outcome

    def raw(self, caller: Caller, scan_id: str) -> str | None:
        """The tool's raw output of a finished scan (None while it runs, or if it never ran)."""
        self.get(caller, scan_id)
        return self.store.raw(scan_id, _visible_to(caller))

    def page(
        self, caller: Caller, *, tool: str | None = None, status: ScanStatus | None = None,
        cursor: str | None = None, limit: int = 50,
    ) -> tuple[list[ScanRecord], str | None]:
        owner = _visible_to(caller)
        records, next_cursor = self.store.page(owner, tool=tool, status=status, cursor=cursor, limit=limit)
        return [self._live_view(record) for record in records], next_cursor

    def cursor_after(self, record: ScanRecord) -> str:
        """The `page` cursor that continues right after `record` (for a page cut short by its reader)."""
        return page_cursor(record)

    def settled(self, caller: Caller, scan_id: str) -> Future[CallOutcome] | None:
        """A future that completes when the scan is settled in the store; None if it already is."""
        self.get(caller, scan_id)
        live = self._live.get(scan_id)
        return live.done if live is not None else None

    async def wait(self, caller: Caller, scan_id: str, wait_sec: float | None) -> ScanRecord:
        """The scan once it has finished, or as it stands after `wait_sec` seconds (None: no limit).

        A scan this runtime runs wakes its waiters as it settles; one that another daemon sharing the
        store runs is read again every `ELSEWHERE_POLL_SEC`, the only news of it there is.
        """
        loop = asyncio.get_running_loop()
        deadline = None if wait_sec is None else loop.time() + wait_sec
        while True:
            future = self.settled(caller, scan_id)
            record = self.get(caller, scan_id)
            left = None if deadline is None else deadline - loop.time()
            if record.status.terminal or (left is not None and left <= 0):
                return record
            with contextlib.suppress(TimeoutError):
                if future is not None:
                    # Shielded: a waiter that gives up must not cancel the scan's own future.
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), left)
                else:
                    await asyncio.sleep(ELSEWHERE_POLL_SEC if left is None else min(ELSEWHERE_POLL_SEC, left))

    def cancel(self, caller: Caller, scan_id: str) -> bool:
        """Ask a running scan to stop (its process group is killed); False if it had already finished."""
        record = self.get(caller, scan_id)
        if record.status.terminal:
            return False
        if self._on_cancel_requested is not None:
            self._on_cancel_requested(record, caller)
        return self._cancel_call(record.call_id)

    def stats(self) -> dict[str, Any]:
        return {
            "path": self.store.path,
            "size_bytes": self.store.size_bytes(),
            "counts": self.store.counts(),
            "expired_total": self.expired_total,
        }

    def _live_view(self, record: ScanRecord) -> ScanRecord:
        live = self._live.get(record.scan_id) if record.status is ScanStatus.WORKING else None
        if live is None:
            return record
        if live.unstored is not None:
            return replace(
                record, progress=live.progress, progress_message=live.progress_message,
                **settled_fields(live.unstored),
            )
        return _with_progress(record, live)


def _visible_to(caller: Caller) -> str | None:
    return None if caller.admin else caller.owner


def _with_progress(record: ScanRecord, live: LiveScan) -> ScanRecord:
    return replace(record, progress=live.progress, progress_message=live.progress_message)
