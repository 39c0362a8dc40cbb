"""The scan store keeps every scan by id and owner, settles each once, pages newest first, and expires the old."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from actors.api import Caller
from actors.containment import end_left_group, process_start_ticks
from actors.results import CallOutcome, ErrorType
from supervisor import Runtime
from supervisor.scans.records import INTERRUPTED, ScanNotFound, ScanRecord, ScanStatus, new_scan_id
from supervisor.scans.store import BadCursor, ScanStore, StoreUnusable
from tests.runtimes import fake_config, fake_runtime
from transports.cli import main

DAY = 86_400.0
LABRECON = str(Path(sys.executable).with_name("labrecon"))


def working(owner: str = "alice", *, at: float = 1000.0, tool: str = "nmap", scan_id: str | None = None) -> ScanRecord:
    return ScanRecord(
        scan_id=scan_id or new_scan_id(), owner=owner, tool=tool, call_id="c", status=ScanStatus.WORKING,
        created_at=at, updated_at=at, arguments={"target": "10.0.0.5"}, target="10.0.0.5",
        resolved_targets=("10.0.0.5",), argv=(tool, "10.0.0.5"),
    )


def done(store: ScanStore, record: ScanRecord, *, at: float, ok: bool = True) -> None:
    if ok:
        outcome = CallOutcome(tool=record.tool, call_id="c", ok=True, result={"hosts": []}, raw_output="<xml/>")
    else:
        outcome = CallOutcome.failure(record.tool, "c", ErrorType.TIMEOUT, "too slow")
    store.finish(record.scan_id, outcome, at=at, progress=100.0, progress_message=None)


def test_scan_ids_carry_128_random_bits():
    ids = {new_scan_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_scan_is_read_back_by_its_owner_and_by_an_admin_only(tmp_path):
    store = ScanStore(tmp_path / "scans.sqlite3")
    record = working("alice")
    store.add(record)
    assert store.get(record.scan_id, "alice") == record
    assert store.get(record.scan_id, None) == record  # an admin
    assert store.get(record.scan_id, "bob") is None
    assert store.get("0" * 32, "alice") is None


def test_a_finished_scan_keeps_outcome_and_raw_output_and_is_never_settled_twice(tmp_path):
    store = ScanStore(":memory:")
    record = working()
    store.add(record)
    assert store.outcome(record.scan_id, "alice") is None
    done(store, record, at=2000.0)
    done(store, record, at=3000.0, ok=False)  # too late: the first settlement stands
    got = store.get(record.scan_id, "alice")
    assert got is not None and got.status is ScanStatus.COMPLETED and got.updated_at == 2000.0
    outcome = store.outcome(record.scan_id, "alice")
    assert outcome is not None and outcome.ok and outcome.result == {"hosts": []}
    assert store.raw(record.scan_id, "alice") == "<xml/>" and store.raw(record.scan_id, "bob") is None


def test_the_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "state" / "labrecon" / "scans.sqlite3"
    ScanStore(path).add(working())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_pages_run_newest_first_and_every_scan_appears_once(tmp_path):
    store = ScanStore(":memory:")
    mine = [working("alice", at=1000.0 + i // 3, tool="nmap" if i % 2 else "gobuster") for i in range(25)]
    for record in mine:
        store.add(record)
    store.add(working("bob", at=5000.0))
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.page("alice", cursor=cursor, limit=4)
        seen += [record.scan_id for record in page]
        if cursor is None:
            break
    newest_first = sorted(mine, key=lambda r: (r.created_at, r.scan_id), reverse=True)
    assert seen == [record.scan_id for record in newest_first]
    nmap_only, _ = store.page("alice", tool="nmap", limit=100)
    assert {r.tool for r in nmap_only} == {"nmap"} and len(nmap_only) == 12
    everyone, _ = store.page(None, limit=100)
    assert len(everyone) == 26
    with pytest.raises(BadCursor):
        store.page("alice", cursor="not a cursor")


def test_finished_scans_expire_by_age_then_by_count_and_working_ones_never(tmp_path):
    store = ScanStore(":memory:")
    old, recent, running = working(at=0.0), working(at=9 * DAY), working(at=0.0)
    for record in (old, recent, running):
        store.add(record)
    done(store, old, at=1.0)
    done(store, recent, at=9 * DAY + 1)
    removed = store.expire(older_than=10 * DAY - 7 * DAY, keep=100)
    assert removed == [(old.scan_id, "alice")]
    assert store.get(running.scan_id, None) is not None
    newer = [working(at=10 * DAY + i) for i in range(3)]
    for i, record in enumerate(newer):
        store.add(record)
        done(store, record, at=10 * DAY + i + 0.5)
    removed = store.expire(older_than=0.0, keep=3)
    assert [scan_id for scan_id, _ in removed] == [recent.scan_id, newer[0].scan_id]
    assert store.counts() == {"working": 1, "completed": 2, "failed": 0, "cancelled": 0}


def test_scans_left_working_by_a_dead_daemon_end_interrupted_with_their_process_groups(tmp_path):
    dead, living = (111, 5, "this-boot"), (222, 6, "this-boot")
    store = ScanStore(tmp_path / "scans.sqlite3", daemon=dead)
    finished, left, never_spawned = working(), working(), working()
    for record in (finished, left, never_spawned):
        store.add(record)
    done(store, finished, at=1500.0)
    store.record_process(left.scan_id, 4242, 777, "/dev/shm/labrecon-run-x")
    neighbour = ScanStore(tmp_path / "scans.sqlite3", daemon=living)
    still_running = working()
    neighbour.add(still_running)  # another daemon's scan, sharing the file
    groups = neighbour.interrupt_running(2000.0, alive=lambda *daemon: daemon == living)
    assert groups == [(left.scan_id, 4242, 777, "/dev/shm/labrecon-run-x")]
    for record in (left, never_spawned):
        got = store.get(record.scan_id, None)
        assert got is not None and got.status is ScanStatus.FAILED and got.error_type == INTERRUPTED
    assert store.get(finished.scan_id, None).status is ScanStatus.COMPLETED  # type: ignore[union-attr]
    assert store.get(still_running.scan_id, None).status is ScanStatus.WORKING  # type: ignore[union-attr]


def test_a_left_process_group_is_ended_only_while_its_leader_is_the_same_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        assert not end_left_group(child.pid, ticks + 1)  # same pid, another process: left alone
        assert child.poll() is None
        assert end_left_group(child.pid, ticks)
        assert child.wait(timeout=10) == -9
    finally:
        if child.poll() is None:
            os.killpg(child.pid, 9)
            child.wait()


def test_every_runtime_call_is_a_scan_kept_past_a_restart(tmp_path):
    store = tmp_path / "scans.sqlite3"
    config = {"scans": {"path": str(store)}}
    with fake_runtime(tmp_path, **config) as runtime:
        ok = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"})
        refused = runtime.call("nmap", {"target": "8.8.8.8"})
        assert ok.ok and not refused.ok
        scans, _ = runtime.scans.page(Caller.local())
    assert [s.status for s in scans] == [ScanStatus.FAILED, ScanStatus.COMPLETED]
    with fake_runtime(tmp_path, **config) as runtime:
        me = Caller.local()
        again, _ = runtime.scans.page(me)
        assert [s.scan_id for s in again] == [s.scan_id for s in scans]
        completed = again[1]
        assert completed.argv[-1] == "10.0.0.5" and completed.progress == 100.0
        outcome = runtime.scans.outcome(me, completed.scan_id)
        assert outcome is not None and outcome.ok and outcome.result is not None
        assert "<nmaprun" in (runtime.scans.raw(me, completed.scan_id) or "")
        assert again[0].error_type == "validation" and again[0].arguments == {"target": "8.8.8.8"}
        with pytest.raises(ScanNotFound):
            runtime.scans.get(Caller(owner="someone-else"), completed.scan_id)
        assert runtime.scans.get(Caller(owner="someone-else", admin=True), completed.scan_id) == completed


def test_a_second_runtime_on_the_same_store_leaves_the_first_ones_running_scans_alone(tmp_path):
    config = {"scans": {"path": str(tmp_path / "scans.sqlite3")}, "tools": {"nmap": {"scenario": {"mode": "hang"}}}}
    with fake_runtime(tmp_path / "a", **config) as first:
        running = threading.Event()  # set by the progress edge the process start sends
        scan_ids: list[str | None] = []
        outcome: list[CallOutcome] = []

        async def call() -> None:
            started = await first.astart("nmap", {"target": "10.0.0.5"}, progress=lambda *_: running.set())
            scan_ids.append(started.scan_id)
            outcome.append(await started.outcome)

        thread = threading.Thread(target=asyncio.run, args=(call(),))
        thread.start()
        assert running.wait(30)
        me, (scan_id,) = Caller.local(), scan_ids
        assert scan_id is not None
        with fake_runtime(tmp_path / "b", **config) as second:
            assert second.scans.get(me, scan_id).status is ScanStatus.WORKING
        assert first.scans.cancel(me, scan_id)
        thread.join(30)
        assert outcome[0].error_type is ErrorType.CANCELLED
        assert first.scans.get(me, scan_id).status is ScanStatus.CANCELLED


def test_the_sweep_removes_expired_scans_by_the_runtimes_clock_refused_calls_first(tmp_path):
    now = [1_000_000.0]
    config = fake_config(tmp_path, scans={"path": ":memory:", "retention_days": 7, "max_scans": 3})
    with Runtime.start(config, clock=lambda: now[0]) as runtime:
        me = Caller.local()
        old = [runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"}) for _ in range(2)]
        assert all(outcome.ok for outcome in old)
        now[0] += 8 * DAY
        runtime.call("nmap", {"target": "10.0.0.6", "ports": "22"})
        assert runtime.scans.expire() == 2
        kept, _ = runtime.scans.page(me)
        assert [scan.target for scan in kept] == ["10.0.0.6"]
        for _ in range(3):
            now[0] += 1  # "oldest" is by creation time: give each its own
            runtime.call("nmap", {"target": "10.0.0.7", "ports": "22"})
        refused = [runtime.call("nmap", {"target": "8.8.8.8"}) for _ in range(3)]
        assert not any(outcome.ok for outcome in refused)
        assert runtime.scans.expire() == 4  # 7 scans, 3 kept: the 3 refusals go first, then the oldest
        kept, _ = runtime.scans.page(me)
        assert [scan.target for scan in kept] == ["10.0.0.7"] * 3
        assert runtime.scans.stats()["expired_total"] == 6


@pytest.mark.parametrize(
    "content", [b"not a database at all, just some bytes " * 200, None], ids=["garbage", "another-schema"]
)
def test_a_file_that_is_not_this_versions_store_is_refused_untouched_and_serve_says_why(tmp_path, content):
    path = tmp_path / "scans.sqlite3"
    if content is None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE scans (scan_id TEXT)")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(StoreUnusable, match=r"scans\.path"):
        ScanStore(path)
    assert path.read_bytes() == before
    config = tmp_path / "labrecon.toml"
    config.write_text(f'[scans]\npath = "{path}"\n')
    served = subprocess.run(
        [LABRECON, "serve", "--config", str(config)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60,
    )
    assert served.returncode == 2 and "scans.path" in served.stderr and "Traceback" not in served.stderr


def test_a_group_left_in_an_earlier_boot_is_settled_but_never_signalled(tmp_path):
    before_reboot = ScanStore(tmp_path / "scans.sqlite3", daemon=(111, 5, "earlier-boot"))
    left = working()
    before_reboot.add(left)
    before_reboot.record_process(left.scan_id, 4242, 777, None)
    now = ScanStore(tmp_path / "scans.sqlite3", daemon=(111, 5, "this-boot"))  # same pid and ticks, new boot
    assert now.interrupt_running(2000.0, alive=lambda *daemon: daemon == (111, 5, "this-boot")) == []
    assert now.get(left.scan_id, None).status is ScanStatus.FAILED  # type: ignore[union-attr]


def test_an_answer_the_store_cannot_take_is_kept_in_memory_and_a_failed_spawn_record_stops_nothing(
    tmp_path, monkeypatch
):
    with fake_runtime(tmp_path, scans={"path": ":memory:"}) as runtime:
        store = runtime.scans.store

        def full(*_: object, **__: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "finish", full)
        monkeypatch.setattr(store, "record_process", full)
        outcome = runtime.call("nmap", {"target": "10.0.0.5", "ports": "22"})
        assert outcome.ok  # the process ran and was supervised to its end
        me = Caller.local()
        (scan,), _ = runtime.scans.page(me)
        assert scan.status is ScanStatus.COMPLETED
        assert runtime.scans.outcome(me, scan.scan_id) == outcome


def test_a_scan_another_daemon_runs_is_waited_for_through_the_shared_store(tmp_path):
    gate = tmp_path / "release"
    store = {"path": str(tmp_path / "scans.sqlite3")}
    blocked = {"nmap": {"scenario": {"mode": "block", "release_file": str(gate)}}}
    with (
        fake_runtime(tmp_path / "a", scans=store, tools=blocked) as runner,
        fake_runtime(tmp_path / "b", scans=store) as other,
    ):
        started = threading.Event()  # set by the progress edge the process start sends
        scan_ids: list[str | None] = []

        async def run() -> None:
            began = await runner.astart("nmap", {"target": "10.0.0.5"}, progress=lambda *_: started.set())
            scan_ids.append(began.scan_id)
            await began.outcome

        thread = threading.Thread(target=asyncio.run, args=(run(),))
        thread.start()
        assert started.wait(30)
        (scan_id,) = scan_ids
        assert scan_id is not None
        me = Caller.local()

        async def wait_elsewhere() -> ScanStatus:
            waiting = asyncio.ensure_future(other.scans.wait(me, scan_id, 60))
            gate.touch()  # the other daemon's scan may finish now
            return (await waiting).status

        assert asyncio.run(wait_elsewhere()) is ScanStatus.COMPLETED
        thread.join(30)


def test_labrecon_check_shows_where_scans_are_kept_and_for_how_long(tmp_path, capsys):
    config = tmp_path / "labrecon.toml"
    config.write_text(f'[scans]\npath = "{tmp_path / "kept.sqlite3"}"\ninline_wait_sec = 5\nretention_days = 2\n')
    main(["check", "--config", str(config)])
    out = capsys.readouterr().out
    assert f"store     {tmp_path / 'kept.sqlite3'}" in out and "a call waits 5s" in out and "kept 2 days" in out
    assert not (tmp_path / "kept.sqlite3").exists()  # checking opens no store
