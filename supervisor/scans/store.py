"""The durable scan store: one SQLite database (WAL), one connection, every statement under one lock.

Every read names the owner it reads for (None: an admin, who reads everyone's), so a scan of another
owner is exactly as invisible as one that never existed. A scan that is `working` in the file belongs
to a live call of this process, or to a process that died: `interrupt_running` settles the latter at
start. Only finished scans expire, oldest first.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NamedTuple

from actors.results import CallOutcome
from supervisor.config import ConfigError
from supervisor.scans.records import INTERRUPTED, ScanRecord, ScanStatus, settled_fields

__all__ = ["SCHEMA_VERSION", "BadCursor", "LeftProcess", "ScanStore", "StoreClosed", "StoreUnusable", "page_cursor"]

_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS scans (
    scan_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    tool TEXT NOT NULL,
    call_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    arguments TEXT NOT NULL,
    target TEXT,
    resolved_targets TEXT NOT NULL,
    argv TEXT NOT NULL,
    progress REAL,
    progress_message TEXT,
    error_type TEXT,
    error TEXT,
    outcome TEXT,
    raw TEXT,
    pgid INTEGER,
    process_start INTEGER,
    process_home TEXT,
    daemon_pid INTEGER,
    daemon_start INTEGER,
    boot_id TEXT
);
CREATE INDEX IF NOT EXISTS scans_by_owner ON scans (owner, created_at DESC, scan_id DESC);
CREATE INDEX IF NOT EXISTS scans_by_owner_tool ON scans (owner, tool, created_at DESC, scan_id DESC);
CREATE INDEX IF NOT EXISTS scans_by_owner_status ON scans (owner, status, created_at DESC, scan_id DESC);
CREATE INDEX IF NOT EXISTS scans_by_age ON scans (created_at DESC, scan_id DESC);
CREATE INDEX IF NOT EXISTS scans_by_tool ON scans (tool, created_at DESC, scan_id DESC);
CREATE INDEX IF NOT EXISTS scans_by_status ON scans (status, created_at DESC, scan_id DESC);
"""

_RECORD_COLUMNS: Final[str] = (
    "scan_id, owner, tool, call_id, status, created_at, updated_at, arguments, target, resolved_targets, "
    "argv, progress, progress_message, error_type, error"
)


SCHEMA_VERSION: Final[int] = 1
"""Kept in the file's `user_version`; a store of another version is refused, never rewritten."""


class StoreUnusable(ConfigError):
    """The store at the configured path cannot be opened as a scan store of this version."""


class StoreClosed(RuntimeError):
    """The store was used after `close` (its runtime has stopped)."""


class BadCursor(ValueError):
    """A pagination cursor this store did not hand out."""


class LeftProcess(NamedTuple):
    """A process group a scan left behind, and what tells it apart from a stranger that reused its pid."""

    scan_id: str
    pgid: int
    start_ticks: int  # the group leader's start time, in clock ticks since boot
    home: str | None  # the run's private HOME, which its processes carry


class ScanStore:
    """Scans on disk (or `:memory:`); safe to use from any thread."""

    def __init__(self, path: str | Path, *, daemon: tuple[int, int, str] = (0, 0, "")) -> None:
        """`daemon` is (pid, start ticks, boot id) of the process whose scans this store records as its own."""
        self.path = str(path)
        self.daemon = daemon
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._db = self._open()
            self._create_or_check()  # before WAL mode: a file that is refused stays as it was
            self._db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreUnusable(f"scans.path: {self.path} cannot be used as the scan store: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The file holds targets and findings: readable by its owner only, from its first byte.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL (set once the file is known to be ours) + NORMAL: a commit is durable against a crash
        # of this process (what matters here), and only a power loss can take the last few back.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _create_or_check(self) -> None:
        with self._transaction() as db:
            ((version,),) = db.execute("PRAGMA user_version").fetchall()
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if version == 0 and not tables:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreUnusable(
                    f"scans.path: {self.path} is not a scan store of this labrecon (schema {version}, "
                    f"expected {SCHEMA_VERSION}); move it away or set [scans] path to another file"
                )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held alone; `StoreClosed` once the store is closed."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the scan store is closed: the runtime has stopped")
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- writes ---------------------------------------------------------------------

    def add(self, record: ScanRecord, *, outcome: CallOutcome | None = None) -> None:
        """Insert a new scan; with `outcome`, one that is already finished (a refused call)."""
        row = (
            record.scan_id,
            record.owner,
            record.tool,
            record.call_id,
            record.status.value,
            record.created_at,
            record.updated_at,
            json.dumps(record.arguments, default=str),
            record.target,
            json.dumps(list(record.resolved_targets)),
            json.dumps(list(record.argv)),
            record.progress,
            record.progress_message,
            record.error_type,
            record.error,
            outcome.model_dump_json() if outcome is not None else None,
            *self.daemon,
        )
        columns = f"{_RECORD_COLUMNS}, outcome, daemon_pid, daemon_start, boot_id"
        with self._connection() as db:
            db.execute(f"INSERT INTO scans ({columns}) VALUES ({', '.join('?' * len(row))})", row)

    def record_process(self, scan_id: str, pgid: int, start_ticks: int, home: str | None = None) -> None:
        """The scan's process group, so a later start can end it if this process dies first."""
        with self._connection() as db:
            db.execute(
                "UPDATE scans SET pgid = ?, process_start = ?, process_home = ? "
                "WHERE scan_id = ? AND status = 'working'",
                (pgid, start_ticks, home, scan_id),
            )

    def finish(
        self,
        scan_id: str,
        outcome: CallOutcome,
        *,
        at: float,
        progress: float | None,
        progress_message: str | None,
    ) -> None:
        """Settle a working scan with its outcome and raw output; a settled scan is never changed again."""
        settled = settled_fields(outcome)
        with self._connection() as db:
            db.execute(
                "UPDATE scans SET status = ?, updated_at = ?, target = ?, resolved_targets = ?, argv = ?, "
                "progress = ?, progress_message = ?, error_type = ?, error = ?, outcome = ?, raw = ?, pgid = NULL "
                "WHERE scan_id = ? AND status = 'working'",
                (
                    settled["status"].value,
                    at,
                    outcome.target,
                    json.dumps(outcome.resolved_targets),
                    json.dumps(outcome.argv),
                    progress,
                    progress_message,
                    settled["error_type"],
                    settled["error"],
                    outcome.model_dump_json(),
                    outcome.raw_output,
                    scan_id,
                ),
            )

    def interrupt_running(self, at: float, *, alive: Callable[[int, int, str], bool]) -> list[LeftProcess]:
        """Settle the scans of daemons that are gone: failed/interrupted; returns their process groups.

        Several daemons of one user may share a store (a stdio server per MCP host, say); a scan whose
        daemon still lives (`alive(pid, start_ticks, boot_id)`) is that daemon's, and left alone. Only
        groups from this boot are returned: a reboot ended the others, and their pids mean nothing now.
        """
        boot = self.daemon[2]
        with self._transaction() as db:
            rows = db.execute(
                "SELECT scan_id, pgid, process_start, process_home, daemon_pid, daemon_start, boot_id FROM scans "
                "WHERE status = 'working'"
            ).fetchall()
            orphaned = [row for row in rows if not alive(row[4] or 0, row[5] or 0, row[6] or "")]
            db.executemany(
                "UPDATE scans SET status = 'failed', updated_at = ?, error_type = ?, pgid = NULL, "
                "error = 'the daemon stopped while this scan was running; run it again' WHERE scan_id = ?",
                [(at, INTERRUPTED, row[0]) for row in orphaned],
            )
        return [LeftProcess(*row[:4]) for row in orphaned if row[1] is not None and row[6] == boot]

    def expire(self, *, older_than: float, keep: int, batch: int = 500) -> list[tuple[str, str]]:
        """Remove up to `batch` finished scans: last updated before `older_than`, then beyond `keep` in all.

        Over `keep`, calls refused before they ran go first, then the oldest finished scans: nobody
        pushes out another owner's scans with calls that cost nothing. Working scans are never removed.
        Returns (scan_id, owner) of each removed scan; call again while it returns a full batch.
        """
        with self._transaction() as db:
            removed = db.execute(
                "DELETE FROM scans WHERE scan_id IN (SELECT scan_id FROM scans WHERE status != 'working' "
                "AND updated_at < ? LIMIT ?) RETURNING scan_id, owner",
                (older_than, batch),
            ).fetchall()
            (total,) = db.execute("SELECT count(*) FROM scans").fetchone()
            if total > keep and len(removed) < batch:
                removed += db.execute(
                    "DELETE FROM scans WHERE scan_id IN (SELECT scan_id FROM scans WHERE status != 'working' "
                    "ORDER BY error_type IS 'validation' AND argv = '[]' DESC, created_at, scan_id LIMIT ?) "
                    "RETURNING scan_id, owner",
                    (min(total - keep, batch - len(removed)),),
                ).fetchall()
        return [(scan_id, owner) for scan_id, owner in removed]

    # --- reads ------------------------------------------------------------------------

    def get(self, scan_id: str, owner: str | None) -> ScanRecord | None:
        """The scan, if it exists and `owner` may see it (None: anyone's)."""
        row = self._one(f"SELECT {_RECORD_COLUMNS} FROM scans WHERE scan_id = ?", scan_id, owner)
        return _record(row) if row is not None else None

    def outcome(self, scan_id: str, owner: str | None) -> CallOutcome | None:
        """A finished scan's full outcome (None while it runs, or when it is not visible)."""
        row = self._one("SELECT outcome FROM scans WHERE scan_id = ?", scan_id, owner)
        if row is None or row[0] is None:
            return None
        return CallOutcome.model_validate_json(row[0])

    def raw(self, scan_id: str, owner: str | None) -> str | None:
        """The tool's raw output as captured (within the byte caps); None while it runs or when not visible."""
        row = self._one("SELECT raw FROM scans WHERE scan_id = ?", scan_id, owner)
        return row[0] if row is not None else None

    def page(
        self,
        owner: str | None,
        *,
        tool: str | None = None,
        status: ScanStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[ScanRecord], str | None]:
        """Scans newest first, `limit` at a time; the cursor for the next page, or None at the end."""
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if tool is not None:
            where.append("tool = ?")
            args.append(tool)
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if cursor is not None:
            created_at, scan_id = _read_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND scan_id < ?))")
            args += [created_at, created_at, scan_id]
        sql = f"SELECT {_RECORD_COLUMNS} FROM scans"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, scan_id DESC LIMIT ?"
        args.append(limit + 1)
        with self._connection() as db:
            rows = db.execute(sql, args).fetchall()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit and records
        return records, page_cursor(records[-1]) if more else None

    def counts(self) -> dict[str, int]:
        """How many scans there are in each status."""
        with self._connection() as db:
            rows = db.execute("SELECT status, count(*) FROM scans GROUP BY status").fetchall()
        counts = {status.value: 0 for status in ScanStatus}
        counts.update(dict(rows))
        return counts

    def size_bytes(self) -> int:
        """The database's size on disk, its write-ahead log included."""
        if self.path == ":memory:":
            with self._connection() as db:
                ((pages,),) = db.execute("PRAGMA page_count").fetchall()
                ((size,),) = db.execute("PRAGMA page_size").fetchall()
            return int(pages) * int(size)
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def _one(self, sql: str, scan_id: str, owner: str | None) -> Any:
        if owner is not None:
            sql += " AND owner = ?"
        with self._connection() as db:
            return db.execute(sql, (scan_id, owner) if owner is not None else (scan_id,)).fetchone()


def _record(row: Any) -> ScanRecord:
    return ScanRecord(
        scan_id=row[0],
        owner=row[1],
        tool=row[2],
        call_id=row[3],
        status=ScanStatus(row[4]),
        created_at=row[5],
        updated_at=row[6],
        arguments=json.loads(row[7]),
        target=row[8],
        resolved_targets=tuple(json.loads(row[9])),
        argv=tuple(json.loads(row[10])),
        progress=row[11],
        progress_message=row[12],
        error_type=row[13],
        error=row[14],
    )


def page_cursor(last: ScanRecord) -> str:
    """The cursor of the page that starts right after `last`."""
    return base64.urlsafe_b64encode(f"{last.created_at!r}|{last.scan_id}".encode()).decode()


def _read_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, scan_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(created_at), scan_id
    except (ValueError, UnicodeError, binascii.Error):
        raise BadCursor("unknown cursor; pass the nextCursor of an earlier page") from None
